#!/usr/bin/env bash
# Builds rebuild-rehearsal/postgres:15 from Debian packages: no registry is needed.
#   1. debootstrap a minimal bookworm with postgresql-15, from this machine's own apt mirror;
#   2. `docker import` it as a base image;
#   3. a small layer with the official image's entrypoint contract (docker-entrypoint.sh).
# The image carries a label with a hash of this directory, so ci/run rebuilds it only when the
# recipe changes.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
image=${HARNESS_PG_IMAGE:-rebuild-rehearsal/postgres:15}
base=rebuild-rehearsal/debian-postgres-base:bookworm
recipe=$(cat "$here"/build.sh "$here"/Dockerfile "$here"/docker-entrypoint.sh | sha256sum | cut -c1-16)

if [ "$(docker image inspect -f '{{ index .Config.Labels "rebuild-rehearsal.recipe" }}' "$image" 2>/dev/null)" = "$recipe" ]; then
    echo "image $image is up to date (recipe $recipe)"
    exit 0
fi

# The mirror is the machine's own, never one written into this repository.
mirror=$(grep -hoE '^URIs:[[:space:]]*\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
if [ -z "$mirror" ]; then
    mirror=$(grep -hE '^deb[[:space:]]' /etc/apt/sources.list 2>/dev/null | grep -v security | awk '{print $2}' | head -n1 || true)
fi
if [ -z "$mirror" ]; then
    echo "error: no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list" >&2
    exit 1
fi

if ! docker image inspect "$base" >/dev/null 2>&1; then
    rootfs=$(mktemp -d /tmp/rr-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    echo "debootstrap bookworm from $mirror (minbase + postgresql-15) ..."
    if ! debootstrap --variant=minbase --include=postgresql-15,locales,util-linux bookworm "$rootfs" "$mirror" > "$rootfs.log" 2>&1; then
        tail -n 30 "$rootfs.log" >&2
        rm -f "$rootfs.log"
        exit 1
    fi
    rm -f "$rootfs.log"
    # The package's own cluster is not wanted: the entrypoint creates one in PGDATA.
    chroot "$rootfs" sh -c 'pg_dropcluster --stop 15 main 2>/dev/null || true; apt-get clean; rm -rf /var/lib/apt/lists/*'
    echo "docker import $base ..."
    tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
fi

echo "docker build $image ..."
DOCKER_BUILDKIT=0 docker build -q --label "rebuild-rehearsal.recipe=$recipe" -t "$image" "$here" >/dev/null
echo "built $image (recipe $recipe)"
