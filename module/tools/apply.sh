#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Build a UPM kernel tree from a pristine Debian linux-source-6.1 tree:
# overlay the new files, then apply the patch series.  This is exactly what
# test/kernel/build.sh does.
#
# usage: apply.sh PRISTINE_TREE DEST
set -eu
src=${1:?usage: apply.sh PRISTINE_TREE DEST}
dst=${2:?usage: apply.sh PRISTINE_TREE DEST}
mod=$(cd "$(dirname "$0")/.." && pwd)
cp -a "$src" "$dst"
for d in mm include Documentation; do
	[ -d "$mod/$d" ] && cp -r "$mod/$d" "$dst/"
done
cd "$dst"
for p in $(cat "$mod/patches/series"); do
	patch -p1 -s < "$mod/patches/$p"
done
