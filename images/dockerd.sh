#!/usr/bin/env bash
# Starts or stops a Docker engine for `make images` and the container test, when none is running.
#
#   images/dockerd.sh start    # no-op when `docker info` already answers; else starts dockerd, waits for it
#   images/dockerd.sh stop     # stops the dockerd this script started (found by its pidfile), nothing else
#   images/dockerd.sh status
#
# Settings (environment):
#   DOCKER                        client to use (default /usr/bin/docker, Debian's: the engine's own version)
#   REVIEWSTACK_DOCKER_DATA_ROOT  the engine's data root: images and build cache, kept between runs
#                                 (default /var/lib/docker)
#   REVIEWSTACK_DOCKER_PIDFILE    (default /var/run/reviewstack-dockerd.pid)
#   REVIEWSTACK_DOCKER_LOG        dockerd's log (default <data root>.log)
# The engine listens on Docker's default socket, so any client finds it without DOCKER_HOST.
set -euo pipefail

DOCKER=${DOCKER:-/usr/bin/docker}
DATA_ROOT=${REVIEWSTACK_DOCKER_DATA_ROOT:-/var/lib/docker}
PIDFILE=${REVIEWSTACK_DOCKER_PIDFILE:-/var/run/reviewstack-dockerd.pid}
LOG=${REVIEWSTACK_DOCKER_LOG:-${DATA_ROOT%/}.log}
DOCKERD=${DOCKERD:-$(command -v dockerd || echo /usr/sbin/dockerd)}

running() { "$DOCKER" info >/dev/null 2>&1; }

ours() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

start() {
    if running; then
        echo "dockerd: an engine is already answering; using it" >&2
        return 0
    fi
    if ours; then
        echo "dockerd: pid $(cat "$PIDFILE") is starting; waiting" >&2
    else
        [ -x "$DOCKERD" ] || { echo "dockerd: $DOCKERD not found: run images/install-tools.sh" >&2; exit 1; }
        mkdir -p "$DATA_ROOT" "$(dirname "$PIDFILE")" "$(dirname "$LOG")"
        # setsid: the engine outlives this shell (and a test's process group) until `stop`
        setsid "$DOCKERD" --data-root "$DATA_ROOT" --pidfile "$PIDFILE" >>"$LOG" 2>&1 </dev/null &
        echo "dockerd: started (pid $!, data root $DATA_ROOT, log $LOG)" >&2
    fi
    for _ in $(seq 1 120); do
        running && return 0
        sleep 0.5
    done
    echo "dockerd: the engine did not come up within 60 s; last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2 || true
    exit 1
}

stop() {
    if ! ours; then
        echo "dockerd: no engine started by this script is running" >&2
        return 0
    fi
    local pid
    pid=$(cat "$PIDFILE")
    kill -TERM "$pid"
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || { echo "dockerd: stopped" >&2; return 0; }
        sleep 0.5
    done
    echo "dockerd: pid $pid still running after 30 s" >&2
    exit 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) running && echo running || { echo "not running"; exit 1; } ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
