#!/bin/sh
# Builder step 2: the gRPC code generated from proto/ (as `make proto` makes it; never taken from the
# working tree), then the packages, built from their folders under /src and installed within
# /src/constraints.txt.
#
#   install.sh [--no-deps PKGS] [--extra PKGS] SPEC...
#       SPEC     a package folder under /src, extras allowed: training-job[deepspeed]
#       --extra  more requirements from the index; --no-deps: the same, without their dependencies
. "$(dirname "$0")/env.sh"

main() {
    no_deps=""
    extra=""
    while :; do
        case "${1:-}" in
            --no-deps) no_deps=$2 ;;
            --extra) extra=$2 ;;
            *) break ;;
        esac
        shift 2
    done
    cd "$SRC"
    # the generated gRPC code, as `make proto` makes it (never taken from the build context)
    python3 -m venv /tmp/protoc
    /tmp/protoc/bin/python -m pip install -q -c constraints.txt grpcio-tools
    rm -rf services/common/reviewstack/v1
    mkdir -p services/common/reviewstack/v1
    /tmp/protoc/bin/python -m grpc_tools.protoc -I proto --python_out=services/common \
        --pyi_out=services/common --grpc_python_out=services/common proto/reviewstack/v1/*.proto
    rm -rf /tmp/protoc
    specs=""
    for spec in "$@"; do
        case "$spec" in
            *deepspeed*)
                # DeepSpeed is an sdist whose setup.py imports torch: built against the venv's torch
                # (no build isolation), pure Python (its ops compile just in time where they are used)
                say "deepspeed (sdist, no build isolation)"
                DS_BUILD_OPS=0 pip install -q --no-build-isolation -c constraints.txt deepspeed
                ;;
        esac
        specs="$specs ./$spec"
    done
    say "installing$specs $extra"
    # shellcheck disable=SC2086
    pip install -q -c constraints.txt $specs $extra
    if [ -n "$no_deps" ]; then
        say "installing without dependencies: $no_deps"
        # shellcheck disable=SC2086
        pip install -q --no-deps -c constraints.txt $no_deps
    fi
    pip check >&2 || say "pip check reports the conflicts above (expected only for --no-deps packages)"
}

main "$@"
