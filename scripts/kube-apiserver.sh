#!/usr/bin/env bash
# Builds a real kube-apiserver (1.20.2) from Debian's own `kubernetes` source package, for the
# integration tests that need a Kubernetes API and have no cluster. Prints the binary's path.
#
#   scripts/kube-apiserver.sh            build once, cache in $PLANELINK_CACHE (default
#                                        ~/.cache/planelink), print the path
#
# Needs root for apt-get (installs golang-go, etcd-server and the two Go library packages
# that replace vendored copies). Nothing is written inside the repository.
set -euo pipefail

cache="${PLANELINK_CACHE:-$HOME/.cache/planelink}"
binary="$cache/kube-apiserver-1.20.2"
if [ -x "$binary" ]; then
  echo "$binary"
  exit 0
fi
mkdir -p "$cache"
log() { echo "kube-apiserver.sh: $*" >&2; }

need=()
command -v go >/dev/null || need+=(golang-go)
command -v etcd >/dev/null || need+=(etcd-server)
[ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || need+=(golang-github-modern-go-reflect2-dev)
[ -d /usr/share/gocode/src/github.com/json-iterator/go ] || need+=(golang-github-json-iterator-go-dev)
command -v make >/dev/null || need+=(make)
command -v patch >/dev/null || need+=(patch)
command -v xz >/dev/null || need+=(xz-utils)
command -v rsync >/dev/null || need+=(rsync)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

work="$cache/kubernetes-build"
rm -rf "$work"
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/apt/sources.list.d"

# A deb-src entry derived from the machine's own apt sources, in a private apt directory so the
# machine's apt configuration is left as it was.
sources=/etc/apt/sources.list.d/debian.sources
[ -f "$sources" ] || { log "no $sources to derive a deb-src entry from"; exit 1; }
sed 's/^Types: deb$/Types: deb-src/' "$sources" >"$work/apt/sources.list.d/debian-src.sources"
: >"$work/apt/sources.list"
apt_private=(
  -o "Dir::Etc::SourceList=$work/apt/sources.list"
  -o "Dir::Etc::SourceParts=$work/apt/sources.list.d"
  -o "Dir::State::Lists=$work/apt/lists"
  -o "Dir::Cache=$work/apt/cache"
)
log "fetching Debian's kubernetes source package"
apt-get "${apt_private[@]}" update -qq >&2
(cd "$work" && apt-get "${apt_private[@]}" source --download-only kubernetes >&2)

cd "$work"
orig=$(ls kubernetes_*.orig.tar.* | head -n1)
debian=$(ls kubernetes_*.debian.tar.* | head -n1)
mkdir tree
tar -xf "$orig" -C tree --strip-components=1
tar -xf "$debian" -C tree
cd tree
if [ -f debian/patches/series ]; then
  while read -r p; do
    case "$p" in ''|'#'*) continue ;; esac
    patch -p1 -s --forward <"debian/patches/${p%% *}" >&2
  done <debian/patches/series
fi

# The vendored reflect2 crashes on Go >= 1.18 at the first custom-resource write; Debian's
# packaged trees are fixed.
for lib in github.com/modern-go/reflect2 github.com/json-iterator/go; do
  rm -rf "vendor/$lib"
  mkdir -p "vendor/$lib"
  rsync -a --exclude '*_test.go' "/usr/share/gocode/src/$lib/" "vendor/$lib/"
done

mkdir -p "$work/gopath/src/k8s.io"
ln -s "$work/tree" "$work/gopath/src/k8s.io/kubernetes"
log "building kube-apiserver (several minutes on 2 cores)"
started=$(date +%s)
(
  cd "$work/gopath/src/k8s.io/kubernetes"
  export GOPATH="$work/gopath" GO111MODULE=off GOPROXY=off GOFLAGS=-mod=vendor CGO_ENABLED=0
  export GOCACHE="$work/gocache"
  unset GOFLAGS
  export KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean
  make WHAT=cmd/kube-apiserver >&2
)
log "built in $(( $(date +%s) - started ))s"
built=$(find "$work/tree/_output" -type f -name kube-apiserver -perm -u+x | head -n1)
[ -n "$built" ] || { log "the build produced no kube-apiserver"; exit 1; }
install -m 0755 "$built" "$binary.tmp"
mv "$binary.tmp" "$binary"
cd "$cache"
rm -rf "$work"
echo "$binary"
