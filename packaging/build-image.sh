#!/usr/bin/env bash
# Builds the three images of packaging/Dockerfile with podman (vfs storage: no daemon,
# no overlay mounts) and checks what each one runs: entrypoint, command, user and the
# OCI labels. Needs target/image-root from packaging/build-static.sh.
#
#   packaging/build-image.sh [TAG]      -> localhost/{planelink,cluster-gateway,cluster-agent}:TAG
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${1:-dev}
command -v podman >/dev/null || { echo "error: podman is required (apt-get install podman)" >&2; exit 1; }
root=target/image-root
[ -x "$root/planelink" ] || { echo "error: $root/planelink is missing; run packaging/build-static.sh first" >&2; exit 1; }
for link in cluster-gateway cluster-agent; do
  [ -L "$root/$link" ] || { echo "error: $root/$link is missing; run packaging/build-static.sh again" >&2; exit 1; }
done
version=$("$root/planelink" version | awk 'NR == 1 { print $2 }')
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
source=$(git config --get remote.origin.url 2>/dev/null || echo "file://$PWD")
podman=(podman --storage-driver vfs)

check() {
  local image=$1 what=$2 want=$3 got
  got=$("${podman[@]}" image inspect --format "$what" "$image")
  if [ "$got" != "$want" ]; then
    echo "error: $image: $what is $got, want $want" >&2
    exit 1
  fi
}

for target in planelink cluster-gateway cluster-agent; do
  image="localhost/$target:$tag"
  "${podman[@]}" build --quiet --file packaging/Dockerfile --target "$target" \
    --build-arg VERSION="$version" --build-arg REVISION="$revision" --build-arg SOURCE="$source" \
    --tag "$image" . >/dev/null
  case $target in
    planelink) check "$image" '{{json .Config.Entrypoint}}' '["/planelink"]'
               check "$image" '{{json .Config.Cmd}}' '["--help"]' ;;
    *)         check "$image" '{{json .Config.Entrypoint}}' "[\"/$target\"]"
               check "$image" '{{json .Config.Cmd}}' 'null' ;;
  esac
  check "$image" '{{.Config.User}}' '65532:65532'
  check "$image" '{{index .Config.Labels "org.opencontainers.image.version"}}' "$version"
  check "$image" '{{index .Config.Labels "org.opencontainers.image.revision"}}' "$revision"
  check "$image" '{{index .Config.Labels "org.opencontainers.image.source"}}' "$source"
  echo "$image: entrypoint $("${podman[@]}" image inspect --format '{{json .Config.Entrypoint}}' "$image"), version $version"
done
