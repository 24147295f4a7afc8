#!/usr/bin/env bash
# Builds a statically linked release binary of planelink (glibc with +crt-static;
# this toolchain has no musl target) and checks that it really is static.
#
#   packaging/build-static.sh            -> target/x86_64-unknown-linux-gnu/release/planelink
#
# An explicit --target keeps +crt-static away from build scripts and proc macros,
# which must stay dynamic.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
cargo build --release --locked --target "$target"
bin="target/$target/release/planelink"

# `file` is the honest judge; ldd's wording differs between versions.
if command -v file >/dev/null; then
  description=$(file -L "$bin")
  case "$description" in
    *"statically linked"*|*"static-pie linked"*) ;;
    *) echo "error: $bin is not static: $description" >&2; exit 1 ;;
  esac
fi
if readelf -d "$bin" 2>/dev/null | grep -q '(NEEDED)'; then
  echo "error: $bin still needs shared libraries:" >&2
  readelf -d "$bin" | grep '(NEEDED)' >&2
  exit 1
fi
"$bin" version >/dev/null

# The image root of packaging/Dockerfile: the binary and a link for each of its names.
root=target/image-root
rm -rf "$root" && mkdir -p "$root"
cp "$bin" "$root/planelink"
for name in $("$bin" --list); do
  [ "$name" = planelink ] || ln -s planelink "$root/$name"
done
echo "$bin"
