#!/bin/bash
# Installs the Debian packages upm needs, and only those that are missing.
#
#   packaging/install-deps.sh [--check] [GROUP...]
#
# Groups: build (compilers and libraries), test (what `make check` runs:
# python3-pytest, node, runc, crun, ...), kernel (the test kernel and its
# QEMU harness), workloads (python3-torch, torchvision, igraph, PIL, jinja2,
# matplotlib, numpy: the functions of `upm bench` and the demos),
# all (every group above; the default), kernel-deb (`make kernel-deb`:
# Debian's kernel configuration and packaging tools; not in all).
# --check only reports what is missing and exits 1 if anything is.
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

declare -A GROUPS_PKGS=(
  [build]="build-essential cmake pkg-config git nlohmann-json3-dev libspdlog-dev libfmt-dev libcli11-dev catch2 libseccomp-dev libssl-dev libxxhash-dev libtoml11-dev help2man ccache"
  [test]="python3 python3-pytest python3-jsonschema python3-yaml nodejs coreutils procps util-linux runc crun busybox-static jq podman strace clang libclang-rt-dev containerd libcap2-bin debootstrap python3-kubernetes docker.io"
  [kernel]="linux-source-6.1 linux-source-6.12 ccache bc bison flex libelf-dev libssl-dev cpio xz-utils rsync kmod libnuma-dev qemu-system-x86 busybox-static"
  [kernel-deb]="linux-source-6.1 linux-source-6.12 linux-config-6.1 linux-config-6.12 dpkg-dev fakeroot bc bison flex libelf-dev libssl-dev cpio xz-utils rsync kmod"
  [workloads]="python3-numpy python3-torch python3-torchvision python3-igraph python3-pil python3-jinja2 python3-matplotlib"
)

check_only=0
groups=()
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --check) check_only=1 ;;
    all) groups+=(build test kernel workloads) ;;
    build|test|kernel|kernel-deb|workloads) groups+=("$arg") ;;
    *) echo "install-deps: unknown group \`$arg\` (want build, test, kernel, kernel-deb, workloads or all)" >&2; exit 2 ;;
  esac
done
[ ${#groups[@]} -eq 0 ] && groups=(build test kernel workloads)

wanted=()
for g in "${groups[@]}"; do
  for p in ${GROUPS_PKGS[$g]}; do wanted+=("$p"); done
done

missing=()
for p in $(printf '%s\n' "${wanted[@]}" | sort -u); do
  # nodejs may come from another origin; any installed node is fine
  if [ "$p" = nodejs ] && command -v node >/dev/null 2>&1; then continue; fi
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$check_only" = 1 ]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}; run \`sudo $0 ${groups[*]}\`" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# An old or empty package list makes apt-get fail to find packages.
apt-get update -q >&2 || echo "install-deps: apt-get update failed; trying with the current lists" >&2
apt-get install -y -q --no-install-recommends "${missing[@]}" >&2

# docker.io starts a node-wide dockerd (a bridge, iptables rules) when it is
# installed on a systemd machine; the tests run a private dockerd of their
# own, so a dockerd that this script brought stays off (enable it by hand if
# this machine should run Docker).
if printf '%s\n' "${missing[@]}" | grep -qx docker.io && [ -d /run/systemd/system ]; then
  systemctl disable --now docker.service docker.socket >&2 2>/dev/null || true
  echo "install-deps: installed docker.io for the tests; its system service is left disabled" \
       "(systemctl enable --now docker to use Docker here)" >&2
fi
