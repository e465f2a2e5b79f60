#!/usr/bin/env bash
# Lays out the pinned MicroPython source tree (with its mbedTLS, micropython-lib and berkeley-db submodules) in DEST.
#
#   tools/micropython_source.sh DEST COMMIT TARBALL TARBALL_SHA256
#
# With a TARBALL (e.g. ../shared/vendor/micropython-<commit>-src.tar.xz, unpacking to micropython/), its sha256 must
# be TARBALL_SHA256. Without one, a shallow git clone of COMMIT and its submodules, checked by commit id (git verifies
# every object by its hash). Writes nothing in DEST unless the whole tree is there and checked.
set -euo pipefail
dest=$1 commit=$2 tarball=${3:-} sha256=${4:-}
submodules=(lib/mbedtls lib/micropython-lib lib/berkeley-db-1.xx)
tmp=$(mktemp -d "$(dirname "$dest")/.micropython-src.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

if [ -n "$tarball" ]; then
	[ -f "$tarball" ] || { echo "MICROPYTHON_TARBALL=$tarball: no such file" >&2; exit 1; }
	echo "MicroPython source: $tarball"
	actual=$(sha256sum "$tarball" | cut -d' ' -f1)
	if [ "$actual" != "$sha256" ]; then
		echo "MICROPYTHON_TARBALL=$tarball: sha256 $actual, expected $sha256" >&2
		exit 1
	fi
	tar -xJf "$tarball" -C "$tmp"
	[ -d "$tmp/micropython/ports/unix" ] || { echo "$tarball does not unpack to micropython/" >&2; exit 1; }
	mv "$tmp/micropython" "$tmp/tree"
else
	url=https://github.com/micropython/micropython
	echo "MicroPython source: shallow clone of $url at $commit (no MICROPYTHON_TARBALL given)"
	git init -q "$tmp/tree"
	git -C "$tmp/tree" remote add origin "$url"
	git -C "$tmp/tree" fetch -q --depth 1 origin "$commit"
	git -C "$tmp/tree" -c advice.detachedHead=false checkout -q FETCH_HEAD
	head=$(git -C "$tmp/tree" rev-parse HEAD)
	[ "$head" = "$commit" ] || { echo "clone is at $head, expected $commit" >&2; exit 1; }
	git -C "$tmp/tree" submodule update -q --init --depth 1 "${submodules[@]}"
fi
for sub in "${submodules[@]}"; do
	[ -n "$(ls -A "$tmp/tree/$sub" 2>/dev/null)" ] || { echo "MicroPython source lacks $sub" >&2; exit 1; }
done
rm -rf "$dest"
mv "$tmp/tree" "$dest"
