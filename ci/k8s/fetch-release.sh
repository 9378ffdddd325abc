#!/usr/bin/env bash
# Official Kubernetes release binaries of a named version, for the `local` provider on a machine
# with internet (this project's CI has none and builds v1.20.2 from Debian's source instead:
# ci/k8s/build.sh). Downloads kube-apiserver, kube-controller-manager, kube-scheduler, kubelet
# and kube-proxy from dl.k8s.io, checks each against its published SHA-256, builds the static
# `pause` from the same release's build/pause/linux/pause.c (needs gcc and a static libc), and
# prints the directory as its last line:
#
#   dir=$(ci/k8s/fetch-release.sh 1.29.7)
#   rehearsal run --provider local --k8s-bin "$dir"      # or RR_K8S_BIN=$dir
#
# Cached under $RR_K8S_CACHE/release-v<version>/ (default /var/cache/rebuild-rehearsal/k8s); a
# second run prints "up to date". Not run by ci/setup.
set -euo pipefail

version=${1:?usage: ci/k8s/fetch-release.sh VERSION (e.g. 1.29.7)}
version=${version#v}
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "error: not a version: $version" >&2; exit 2; }
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
cache=${RR_K8S_CACHE:-/var/cache/rebuild-rehearsal/k8s}
out=$cache/release-v$version
say() { printf '==> %s\n' "$*" >&2; }

if [ -f "$out/COMPLETE" ]; then
    say "Kubernetes v$version release binaries are up to date"
    echo "$out/bin"
    exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.release.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/bin"
base=https://dl.k8s.io/release/v$version/bin/linux/$arch
for program in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    say "download $program v$version ($arch)"
    curl -fsSL --retry 3 -o "$tmp/bin/$program" "$base/$program"
    want=$(curl -fsSL --retry 3 "$base/$program.sha256")
    echo "$want  $tmp/bin/$program" | sha256sum --check --quiet
    chmod 0755 "$tmp/bin/$program"
done
say "build pause from the v$version source"
curl -fsSL --retry 3 -o "$tmp/pause.c" \
    "https://raw.githubusercontent.com/kubernetes/kubernetes/v$version/build/pause/linux/pause.c"
gcc -Os -static -o "$tmp/bin/pause" "$tmp/pause.c" -DVERSION="v$version"
echo "version=v$version arch=$arch" >"$tmp/bin/../COMPLETE"
rm -rf "$out"
mkdir -p "$out"
mv "$tmp/bin" "$out/bin"
mv "$tmp/COMPLETE" "$out/COMPLETE"
say "written to $out/bin"
echo "$out/bin"
