#!/usr/bin/env bash
# Builds a Debian bookworm base image with Python 3.11 without any container registry:
# debootstrap a minimal root filesystem from the Debian mirror apt already uses, then
# `docker import` it. Needs root, debootstrap and a running dockerd.
#
#   compose/build-local-base.sh [IMAGE]        # default local/bookworm-python:latest
#
# Env: MIRROR (default: the first URI in /etc/apt/sources.list.d/debian.sources or
#      /etc/apt/sources.list), WORKDIR (default /var/tmp/shim-local-base; the root
#      filesystem is built there and removed afterwards; debootstrap's .deb cache is kept).
# Takes about 70 s; the image is about 190 MB. Debian bookworm's python3 is 3.11.
set -euo pipefail

IMAGE=${1:-local/bookworm-python:latest}
WORKDIR=${WORKDIR:-/var/tmp/shim-local-base}

if [[ -z "${MIRROR:-}" ]]; then
    MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
fi
if [[ -z "${MIRROR:-}" ]]; then
    MIRROR=$(awk '$1 == "deb" && $2 ~ /^http/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
: "${MIRROR:?no Debian mirror found in apt sources: set MIRROR=http://deb.debian.org/debian}"

command -v debootstrap >/dev/null || {
    echo "build-local-base: debootstrap is missing (apt-get install -y debootstrap)" >&2
    exit 1
}
[[ $(id -u) -eq 0 ]] || { echo "build-local-base: debootstrap needs root" >&2; exit 1; }

rootfs="$WORKDIR/rootfs"
mkdir -p "$WORKDIR/debcache"
rm -rf "$rootfs"
trap 'rm -rf "$rootfs"' EXIT

echo "build-local-base: debootstrap bookworm from $MIRROR (about a minute)"
if ! debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        --cache-dir="$WORKDIR/debcache" bookworm "$rootfs" "$MIRROR" \
        >"$WORKDIR/debootstrap.log" 2>&1; then
    tail -20 "$WORKDIR/debootstrap.log" >&2
    echo "build-local-base: debootstrap failed (log: $WORKDIR/debootstrap.log)" >&2
    exit 1
fi
# Slim it: package lists, caches, documentation.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*

echo "build-local-base: importing $(du -sh "$rootfs" | cut -f1) as $IMAGE"
tar --numeric-owner -C "$rootfs" -c . |
    docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
docker run --rm --network none "$IMAGE" \
    python3 -c 'import sys, venv, ensurepip; print("build-local-base: ok, python", sys.version.split()[0])'
