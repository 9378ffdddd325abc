#!/usr/bin/env bash
# Builds a real Kubernetes control plane and node (v1.20.2) from Debian's `kubernetes` source
# package, with no registry and no internet beyond the Debian mirror:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, and the pause
#   binary of the same tree (built with gcc -static).
# The result goes to $RR_K8S_CACHE (default /var/cache/rebuild-rehearsal/k8s) under a directory
# named after the version and a hash of this script, so a second run prints "up to date" at
# once and a changed recipe builds anew. Prints nothing but progress; the last line is the
# directory that holds bin/.
#
# On a machine with internet, official release binaries of any version can be used instead:
# see ci/k8s/fetch-release.sh and `--k8s-bin DIR` / RR_K8S_BIN.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
version=1.20.2
debian_version=1.20.5+really1.20.2-1.1+deb12u1
recipe=$(sha256sum "$here/build.sh" | cut -c1-16)
cache=${RR_K8S_CACHE:-/var/cache/rebuild-rehearsal/k8s}
out=$cache/v$version-$recipe
components=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

say() { printf '==> %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ -f "$out/COMPLETE" ]; then
    say "kubernetes v$version binaries are up to date (recipe $recipe)"
    echo "$out"
    exit 0
fi

# Build tools. golang-1.19 is the newest Go in bookworm that this tree builds with; reflect2
# v1.0.2 replaces the vendored v1.0.1, which breaks on Go >= 1.18.
need=()
[ -x /usr/lib/go-1.19/bin/go ] || need+=(golang-1.19-go)
[ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || need+=(golang-github-modern-go-reflect2-dev)
command -v rsync >/dev/null || need+=(rsync)
command -v dpkg-source >/dev/null || need+=(dpkg-dev)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)

# The Debian mirror this machine already uses, for the deb-src entry.
mirror=$(grep -hoE '^URIs:[[:space:]]*\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
if [ -z "$mirror" ]; then
    mirror=$(grep -hE '^deb[[:space:]]' /etc/apt/sources.list 2>/dev/null | grep -v security | awk '{print $2}' | head -n1 || true)
fi
[ -n "$mirror" ] || { echo "error: no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list" >&2; exit 1; }
src_list=/etc/apt/sources.list.d/rebuild-rehearsal-src.sources
update=0
if ! grep -qs '^Types: deb-src' /etc/apt/sources.list.d/*.sources; then
    say "adding a deb-src entry for $mirror ($src_list)"
    as_root tee "$src_list" >/dev/null <<SRC
Types: deb-src
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    update=1
fi
if [ ${#need[@]} -gt 0 ] || [ $update = 1 ]; then
    say "apt-get install ${need[*]:-(sources only)}"
    log=$(mktemp)
    if ! { as_root apt-get update -qq && { [ ${#need[@]} -eq 0 ] || as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${need[@]}"; }; } >"$log" 2>&1; then
        tail -n 30 "$log" >&2; rm -f "$log"
        echo "error: apt-get failed" >&2; exit 1
    fi
    rm -f "$log"
fi

as_root mkdir -p "$cache"
work=$(mktemp -d "${TMPDIR:-/var/tmp}/rr-k8s-build.XXXXXX")
cleanup() { chmod -R u+w "$work" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

say "apt-get source kubernetes=$debian_version"
(cd "$work" && apt-get source --download-only "kubernetes=$debian_version" >"$work/source.log" 2>&1) || {
    tail -n 20 "$work/source.log" >&2; echo "error: could not download the kubernetes source package" >&2; exit 1; }
(cd "$work" && dpkg-source --no-check -x kubernetes_*.dsc tree >"$work/unpack.log" 2>&1) || {
    tail -n 20 "$work/unpack.log" >&2; echo "error: could not unpack the kubernetes source package" >&2; exit 1; }
tree=$work/tree

# GOPATH mode: module mode fails on this tree ("updates to go.mod needed, disabled by -mod=vendor").
mkdir -p "$work/gopath/src/k8s.io"
ln -s "$tree" "$work/gopath/src/k8s.io/kubernetes"
rm -rf "$tree/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$tree/vendor/github.com/modern-go/reflect2"
rm -f "$tree/vendor/github.com/modern-go/reflect2/go.mod"

export GOPATH=$work/gopath GO111MODULE=off GOPROXY=off CGO_ENABLED=0 GOFLAGS=
# The Go build cache lives (and dies) with the scratch tree: kept, it is several GB that no
# later run reads, and CI machines have little disk to spare.
export GOCACHE=$work/gocache
export PATH=/usr/lib/go-1.19/bin:$PATH
cd "$work/gopath/src/k8s.io/kubernetes"

start=$(date +%s)
say "make generated_files (a few minutes)"
if ! make generated_files >"$work/generated.log" 2>&1; then
    tail -n 30 "$work/generated.log" >&2
    echo "error: make generated_files failed (log above)" >&2; exit 1
fi
pkg=k8s.io/kubernetes/vendor/k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=v$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=20 -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
mkdir -p "$work/bin"
for c in "${components[@]}"; do
    t0=$(date +%s)
    say "go build $c"
    if ! go build -p "$(nproc)" -ldflags "$ldflags" -o "$work/bin/$c" "./cmd/$c" >"$work/build-$c.log" 2>&1; then
        tail -n 30 "$work/build-$c.log" >&2
        echo "error: go build ./cmd/$c failed (log above)" >&2; exit 1
    fi
    say "built $c in $(( $(date +%s) - t0 )) s"
done
say "gcc -static pause"
gcc -Os -Wall -Werror -static -DVERSION=v3.4.1-rr -o "$work/bin/pause" build/pause/linux/pause.c
strip "$work/bin/pause" 2>/dev/null || true

as_root rm -rf "$out.tmp"
as_root mkdir -p "$out.tmp"
as_root cp -a "$work/bin" "$out.tmp/bin"
echo "version=v$version recipe=$recipe debian=$debian_version build_seconds=$(( $(date +%s) - start ))" | as_root tee "$out.tmp/COMPLETE" >/dev/null
as_root rm -rf "$out"
as_root mv "$out.tmp" "$out"
# Builds of older recipes are never read again.
for old in "$cache"/v*-*; do
    [ "$old" = "$out" ] || as_root rm -rf "$old"
done
as_root rm -rf "$cache/go-build-cache"
say "kubernetes v$version built in $(( $(date +%s) - start )) s into $out"
echo "$out"
