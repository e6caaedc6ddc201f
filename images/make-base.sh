#!/usr/bin/env bash
# Makes the local base image the Dockerfiles build on when no registry can be reached (no python:3.11-slim
# to pull): Debian bookworm from debootstrap, with Debian's python3 (3.11), its venv module, pip and the
# CA certificates, imported with `docker import`. It offers what the Dockerfiles expect of python:3.11-slim:
# `python3` (with `-m venv`) and `pip` on PATH, useradd, /bin/sh.
#
#   images/make-base.sh [TAG]      # default review-stack/base:bookworm; no-op when TAG exists (FORCE=1 redoes it)
#
# Environment: DOCKER (client, default /usr/bin/docker), DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

TAG=${1:-review-stack/base:bookworm}
DOCKER=${DOCKER:-/usr/bin/docker}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PACKAGES=python3,python3-venv,python3-pip,ca-certificates

if [ "${FORCE:-0}" != 1 ] && "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
    echo "base: $TAG exists" >&2
    exit 0
fi
command -v debootstrap >/dev/null 2>&1 || PATH=$PATH:/usr/sbin
command -v debootstrap >/dev/null 2>&1 || { echo "base: debootstrap missing: run images/install-tools.sh" >&2; exit 1; }

root=$(mktemp -d "${TMPDIR:-/tmp}/reviewstack-base.XXXXXX")
trap 'rm -rf "$root"' EXIT
echo "base: debootstrap $SUITE ($PACKAGES) from $MIRROR" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 || {
    tail -n 40 "$root.log" >&2
    exit 1
}
rm -f "$root.log"
# what an image does not need: package lists, caches, docs and man pages, logs
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/tmp/* \
    "$root"/dev/* "$root"/proc/* "$root"/sys/* 2>/dev/null || true
printf 'deb %s %s main\ndeb %s %s-updates main\n' "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" \
    >"$root/etc/apt/sources.list"
test -x "$root/usr/bin/python3" && test -x "$root/usr/bin/pip"

tar -C "$root" --numeric-owner -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase $SUITE + $PACKAGES" \
    - "$TAG" >/dev/null
echo "base: $TAG ($("$DOCKER" image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))" >&2
