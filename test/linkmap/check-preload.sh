#!/bin/bash
# Checks that libupm-preload.so holds only in-process code (issue #12):
#
#   check-preload.sh PRELOAD LINK_MAP VERSION_SCRIPT INPROC_LIB_DIR
#
# 1. the link map names no object of the host library: no member of
#    libupm-host.a, and no object compiled from a source under hooks/lib,
#    whichever way it came in; libupm-inproc.a's members come from
#    INPROC_LIB_DIR (shim/lib);
# 2. the dynamic symbol table defines exactly the version script's global
#    names, and names no upm C++ symbol (defined or not);
# 3. NEEDED lists libc and the dynamic loader, nothing else.
#
# Every byte of the preload is loaded into other people's processes: a call
# from the preload into a host helper would otherwise bring spec editing, the
# agent or the dlopen of libcrypto into every container without a word.
set -uo pipefail

[ $# -eq 4 ] || { echo "usage: $0 PRELOAD LINK_MAP VERSION_SCRIPT INPROC_LIB_DIR" >&2; exit 2; }
preload=$1 map=$2 script=$3 inproc_dir=$4
for f in "$preload" "$map" "$script"; do
    [ -f "$f" ] || { echo "preload-linkmap: \`$f\` does not exist: build the preload first (cmake --build BUILD --target upm-preload)" >&2; exit 1; }
done
[ "$map" -nt "$preload" ] || [ ! "$preload" -nt "$map" ] || {
    echo "preload-linkmap: \`$map\` is older than \`$preload\`: relink the preload" >&2; exit 1; }

fail=0
bad() { echo "preload-linkmap: FAIL: $*" >&2; fail=1; }

# 1. Objects.  The map's "LOAD" lines name every input file, its archive
# section every member taken from an archive.  A host object is one of
# libupm-host.a or one compiled from a source under hooks/lib (its object
# path then has `hooks/lib/`); members of libupm-inproc.a must be named after
# the library's own sources (shim/lib).
members=$(awk '/^Archive member included/ {f=1; next}
               /^(Discarded input sections|Allocating common|Memory Configuration|As-needed library)/ {f=0}
               f && /^[^ ]/ && /\.a\(/ {print $1}' "$map" | sort -u)
loads=$(awk '$1 == "LOAD" {print $2}' "$map")
n_members=$(printf '%s\n' "$members" | grep -c .)
host=$(printf '%s\n%s\n' "$loads" "$members" | grep -E 'hooks/lib/|upm-host\.dir|libupm-host\.a' | sort -u)
[ -z "$host" ] || bad "host objects in the preload's link: $(echo $host)"
inproc_objs=$(find "$inproc_dir" -name '*.cpp' -printf '%f.o\n' | sort -u)
while read -r m; do
    [ -n "$m" ] || continue
    obj=${m##*(}; obj=${obj%)}
    grep -qxF "$obj" <<<"$inproc_objs" || bad "\`$obj\` of libupm-inproc.a is not compiled from shim/lib"
done < <(grep 'libupm-inproc\.a(' <<<"$members")

# 2. Dynamic symbols.
want=$(sed -n '/global:/,/local:/p' "$script" | grep -oE '^[[:space:]]*[A-Za-z_][A-Za-z0-9_]*;' | tr -d ' \t;' | sort -u)
dyn=$(readelf --dyn-syms -W "$preload")
have=$(awk '$7 != "UND" && ($5 == "GLOBAL" || $5 == "WEAK") {sub(/@.*/, "", $8); print $8}' <<<"$dyn" | sort -u)
extra=$(comm -13 <(echo "$want") <(echo "$have"))
missing=$(comm -23 <(echo "$want") <(echo "$have"))
[ -z "$extra" ] || bad "exported beyond the version script: $(echo $extra)"
[ -z "$missing" ] || bad "the version script's $(echo $missing) not exported"
upm_syms=$(awk '{print $8}' <<<"$dyn" | grep -E '^_Z[A-Z]*N?[0-9]+upm' || true)
[ -z "$upm_syms" ] || bad "upm C++ symbols in the dynamic symbol table: $(echo $upm_syms | head -c 400)"

# 3. NEEDED.
needed=$(readelf -d -W "$preload" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
for lib in $needed; do
    case "$lib" in
    libc.so.6|ld-linux-*.so.*) ;;
    *) bad "NEEDED \`$lib\`: the preload may need only libc and the loader" ;;
    esac
done

echo "preload-linkmap: $(echo $loads | wc -w) inputs, $n_members archive members ($(grep -c 'libupm-inproc\.a(' <<<"$members") of libupm-inproc), NEEDED: $(echo $needed), $(echo "$have" | grep -c .) exported symbols"
exit $fail
