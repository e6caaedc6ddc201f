#!/usr/bin/env bash
# Installs system packages the tests need on a Debian/Ubuntu machine. `containers` (default): what
# `make images` and the container test need, Docker's engine as Debian packages it (docker.io: dockerd,
# containerd, runc and a client at /usr/bin/docker) and debootstrap (the local base image: no registry can
# be reached here). `browser`: Chromium and its chromedriver, for the tests that open HTML reports.
# Idempotent: does nothing when all are present. Needs root (or sudo) and the distribution's package mirror.
set -euo pipefail

need=()
case "${1:-containers}" in
containers)
    [ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || need+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
    ;;
browser) # the reports' browser tests: headless Chromium driven through chromedriver (WebDriver)
    command -v chromium >/dev/null 2>&1 || need+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
    ;;
*)
    echo "install-tools: unknown tool set ${1} (containers or browser)" >&2
    exit 2
    ;;
esac
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-tools: need root to install ${need[*]}" >&2; exit 1; }
    sudo=(sudo)
fi
echo "install-tools: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
