#!/usr/bin/env bash
# The file systems the `local` provider's images are made of, built from Debian packages (no
# registry is reachable):
#   rootfs-debian.tar  a debootstrap'd bookworm (minbase + redis-server + ca-certificates): the
#                      base of the redis:7-alpine stand-in and of the titanium/* images, which
#                      the provider packs as OCI images at start (harness::oci) with the
#                      workspace's own `titanium` binary as a second layer;
#   postgres.tar       `docker save` of the project's PostgreSQL image (ci/images/postgres),
#                      imported as postgres:15-alpine;
# into $RR_K8S_CACHE/images-<recipe>/ (default cache /var/cache/rebuild-rehearsal/k8s). A second
# run prints "up to date". The pause image is made from the pause binary of ci/k8s/build.sh.
# Needs Docker (ci/setup starts it) and debootstrap. The last line printed is the directory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
pg_image=${HARNESS_PG_IMAGE:-rebuild-rehearsal/postgres:15}
pg_recipe=$(docker image inspect -f '{{ index .Config.Labels "rebuild-rehearsal.recipe" }}' "$pg_image" 2>/dev/null || true)
[ -n "$pg_recipe" ] || { echo "error: image $pg_image is missing; run ci/images/postgres/build.sh first" >&2; exit 1; }
recipe=$( { sha256sum <"$here/images.sh"; echo "$pg_recipe"; } | sha256sum | cut -c1-16)
cache=${RR_K8S_CACHE:-/var/cache/rebuild-rehearsal/k8s}
out=$cache/images-$recipe

say() { printf '==> %s\n' "$*" >&2; }

if [ -f "$out/COMPLETE" ]; then
    say "local provider images are up to date (recipe $recipe)"
    echo "$out"
    exit 0
fi

mirror=$(grep -hoE '^URIs:[[:space:]]*\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
if [ -z "$mirror" ]; then
    mirror=$(grep -hE '^deb[[:space:]]' /etc/apt/sources.list 2>/dev/null | grep -v security | awk '{print $2}' | head -n1 || true)
fi
[ -n "$mirror" ] || { echo "error: no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list" >&2; exit 1; }

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.images.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/rootfs"

say "debootstrap bookworm from $mirror (minbase + redis-server)"
if ! debootstrap --variant=minbase --include=redis-server,ca-certificates bookworm "$tmp/rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1; then
    tail -n 30 "$tmp/debootstrap.log" >&2
    echo "error: debootstrap failed" >&2
    exit 1
fi
# The package's service is not wanted; apt lists and caches are not either. Files owned by
# root:root in a stable order, so the layer's digest depends on the packages only.
chroot "$tmp/rootfs" sh -c 'apt-get clean; rm -rf /var/lib/apt/lists/* /var/log/*.log /var/cache/debconf/*-old'
mkdir -p "$tmp/out"
tar --sort=name --numeric-owner -C "$tmp/rootfs" -cf "$tmp/out/rootfs-debian.tar" .

say "docker save $pg_image"
docker save -o "$tmp/out/postgres.tar" "$pg_image"

echo "recipe=$recipe postgres_image=$pg_image postgres_recipe=$pg_recipe" >"$tmp/out/COMPLETE"
chmod 0755 "$tmp/out"
rm -rf "$out"
mv "$tmp/out" "$out"
# Disk is scarce on CI: the images of older recipes go once this one is complete.
for old in "$cache"/images-*; do
    [ "$old" = "$out" ] || rm -rf "$old"
done
say "local provider images written to $out"
echo "$out"
