#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Regenerate module/patches/ from a kernel working tree whose git history is
# "base" (the pristine Debian linux-source-6.1 tree, tagged "base") followed
# by one commit per patch.  New files are not in those commits: they live in
# module/{mm,include,Documentation} and are overlaid before patching.
#
# usage: regen-patches.sh KERNEL_GIT_TREE
set -eu
tree=${1:?usage: regen-patches.sh KERNEL_GIT_TREE}
here=$(cd "$(dirname "$0")/.." && pwd)
rm -f "$here"/patches/*.patch
git -C "$tree" format-patch -q --no-signature --zero-commit -N \
	--diff-algorithm=histogram \
	base..HEAD -o "$here/patches"
(cd "$here/patches" && ls ./*.patch | sed 's|^\./||') > "$here/patches/series"
cat "$here/patches/series"
