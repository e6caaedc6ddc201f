#!/usr/bin/env bash
# Builds review-stack's images with the local Docker engine (`make images`).
#
#   images/build.sh                  # every image that can be built here (list below)
#   images/build.sh review generation-cpu    # some of them; `images/build.sh --list` names them all
#
# Images (context: the repository root; VERSION defaults to 0.1.0). The ones with torch build on a shared
# runtime image, review-stack/runtime:VERSION-cpu (or -cuda; images/runtime/Dockerfile: the base, the user
# and /opt/venv with torch), built here first when one of them is asked for, so that torch is installed
# and stored once instead of once per image:
#   dataprep           review-stack/dataprep:VERSION          services/dataprep/Dockerfile
#   training           review-stack/training:VERSION          services/training/Dockerfile (+ the job)
#   training-job       review-stack/training-job:VERSION      training-job/Dockerfile         (CUDA base)
#   training-job-cpu   review-stack/training-job:VERSION-cpu  the same Dockerfile on the CPU base
#   review             review-stack/review:VERSION            services/review/Dockerfile
#   generation-cpu     review-stack/generation:VERSION-cpu    services/generation/Dockerfile
#   generation-cuda    review-stack/generation:VERSION-cuda   the same, VARIANT=cuda           (CUDA base)
#   evaluation         review-stack/evaluation:VERSION        eval-service/Dockerfile
#   web                review-stack/web:VERSION               services/web/Dockerfile (no torch, CPU base)
#   tgi                review-stack/tgi:VERSION               services/penalty/docker/tgi/Dockerfile (TGI base)
#   moto               review-stack/moto:test                 tests/containers/s3/Dockerfile (test S3 server)
# The default set is every image but moto whose base is available: the CUDA and TGI images need their
# official bases (REVIEWSTACK_CUDA_BASE_IMAGE, REVIEWSTACK_TGI_IMAGE, pulled or already present); where
# none can be had (no registry), training-job-cpu builds the CUDA Dockerfile's code path on the CPU base.
#
# Environment:
#   DOCKER                      client (default /usr/bin/docker, Debian's docker.io; BuildKit is used)
#   REVIEWSTACK_IMAGE_VERSION   tag version (default 0.1.0)
#   REVIEWSTACK_BASE_IMAGE      CPU base; default "local": review-stack/base:bookworm, made here by
#                               images/make-base.sh (debootstrap) when missing. python:3.11-slim where a
#                               registry is reachable.
#   REVIEWSTACK_CUDA_BASE_IMAGE (default pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime)
#   REVIEWSTACK_TGI_IMAGE       (default ghcr.io/huggingface/text-generation-inference:3.3.7)
#   REVIEWSTACK_WHEELHOUSE      folder(s) of local wheels (':'-separated) searched for the CPU torch wheel;
#                               default: pip's own find-links (PIP_FIND_LINKS, `pip config`). Without one,
#                               torch comes from TORCH_INDEX.
#   TORCH_VERSION, TORCH_INDEX  (defaults: the Dockerfiles', 2.13.0 from the PyTorch CPU index)
#   LLAMA3_TOKENIZER_NPM        (default: the Dockerfiles', as the Makefile's)
#   PIP_CERT                    CA bundle for pip inside builds (default: pip's `cert` setting, else the
#                               system bundle); given as a build secret, never stored in an image
#   REVIEWSTACK_BUILD_LOGS      folder for one build log per image (default .cache/images/ in the repo)
#   REVIEWSTACK_BUILD_CACHE_KEEP  build cache kept after a build, most recent first (default 12GB; off)
#   REVIEWSTACK_BUILD_MIN_FREE_GB free space the engine's data root must have before a build (default:
#                               25 when no review-stack image is there yet, else 8; 0 = no check)
# The engine must be running: images/dockerd.sh start (the Makefile target does it).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DOCKER=${DOCKER:-/usr/bin/docker}
VERSION=${REVIEWSTACK_IMAGE_VERSION:-0.1.0}
BASE=${REVIEWSTACK_BASE_IMAGE:-local}
CUDA_BASE=${REVIEWSTACK_CUDA_BASE_IMAGE:-pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime}
TGI_BASE=${REVIEWSTACK_TGI_IMAGE:-ghcr.io/huggingface/text-generation-inference:3.3.7}
LOGS=${REVIEWSTACK_BUILD_LOGS:-$ROOT/.cache/images}
LOCAL_BASE=review-stack/base:bookworm
WHEELHOUSE_IMAGE=review-stack/wheelhouse:local
export DOCKER_BUILDKIT=1

ALL=(dataprep training training-job training-job-cpu review generation-cpu generation-cuda evaluation web tgi)
if [ "${1:-}" = --list ]; then
    printf '%s\n' "${ALL[@]}" moto
    exit 0
fi

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
# a base is usable when it is here or can be pulled
usable_base() { have_image "$1" || "$DOCKER" pull -q "$1" >/dev/null 2>&1; }

"$DOCKER" info >/dev/null 2>&1 || {
    log "no Docker engine answers: run images/install-tools.sh, then images/dockerd.sh start"
    exit 1
}
mkdir -p "$LOGS"

# -- room on the engine's disk -------------------------------------------------------------------------------
# A build from nothing writes ~10 GB of images and up to the cache cap of builder stages before the prune;
# a rebuild after a change rewrites each changed image's venv layer (~2 GB each). Running out half-way
# fails with ENOSPC somewhere in a build log, and leaves every other process on that disk failing too.
data_root=$("$DOCKER" info --format '{{.DockerRootDir}}' 2>/dev/null || true)
if [ -n "$data_root" ] && [ -d "$data_root" ]; then # a remote engine's disk cannot be measured from here
    need_gb=${REVIEWSTACK_BUILD_MIN_FREE_GB:-}
    if [ -z "$need_gb" ]; then
        if [ -n "$("$DOCKER" image ls -q 'review-stack/*' 2>/dev/null)" ]; then need_gb=8; else need_gb=25; fi
    fi
    free_gb=$(df -Pk "$data_root" | awk 'NR == 2 { printf "%d", $4 / 1048576 }')
    if [ "$need_gb" -gt 0 ] && [ "$free_gb" -lt "$need_gb" ]; then
        log "only $free_gb GB free under $data_root (the Docker engine's data root); this build needs about"
        log "$need_gb GB. Free space there (docker builder prune; docker image prune), or start the engine"
        log "on a larger disk (REVIEWSTACK_DOCKER_DATA_ROOT=DIR images/dockerd.sh start). To build anyway:"
        log "REVIEWSTACK_BUILD_MIN_FREE_GB=0"
        exit 1
    fi
fi

# -- the CPU base ----------------------------------------------------------------------------------------
if [ "$BASE" = local ]; then
    "$ROOT/images/make-base.sh" "$LOCAL_BASE"
    BASE=$LOCAL_BASE
fi

# -- pip's CA bundle, as a build secret --------------------------------------------------------------------
cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
[ -n "$cert" ] && [ -f "$cert" ] || cert=/etc/ssl/certs/ca-certificates.crt
secret=()
[ -f "$cert" ] && secret=(--secret "id=pip-cert,src=$cert")

# -- the wheelhouse: local torch wheels, as a tiny image the Dockerfiles mount -------------------------------
torch_version=${TORCH_VERSION:-2.13.0}
wheel_dirs=${REVIEWSTACK_WHEELHOUSE:-}
if [ -z "$wheel_dirs" ]; then
    # pip's find-links (env or config; space-separated); only local folders count
    links="${PIP_FIND_LINKS:-} $(python3 -m pip config list 2>/dev/null | sed -n "s/^[a-z:_]*\.find-links='\(.*\)'$/\1/p" | tr '\n' ' ')"
    for link in $links; do
        link=${link#file://}
        [ -d "$link" ] && wheel_dirs="$wheel_dirs:$link"
    done
fi
wheels=()
IFS=: read -r -a dirs <<<"$wheel_dirs"
for dir in "${dirs[@]}"; do
    [ -n "$dir" ] || continue
    for whl in "$dir"/torch-"$torch_version"[+-]*cp311*.whl; do
        [ -f "$whl" ] && wheels+=("$whl")
    done
done
wheelhouse_arg=()
if [ ${#wheels[@]} -gt 0 ]; then
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    for whl in "${wheels[@]}"; do # the same folder may be named twice (env and config)
        [ -e "$stage/${whl##*/}" ] || ln "$whl" "$stage/" 2>/dev/null || cp "$whl" "$stage/"
    done
    printf 'FROM scratch\nCOPY *.whl /\n' >"$stage/Dockerfile"
    "$DOCKER" build -q -t "$WHEELHOUSE_IMAGE" "$stage" >/dev/null
    wheelhouse_arg=(--build-arg "WHEELHOUSE=$WHEELHOUSE_IMAGE")
    log "wheelhouse: $(cd "$stage" && ls -- *.whl)"
else
    log "no local torch $torch_version wheel found: torch comes from ${TORCH_INDEX:-the PyTorch CPU index}"
fi

common=("${secret[@]}" "${wheelhouse_arg[@]}")
[ -n "${TORCH_VERSION:-}" ] && common+=(--build-arg "TORCH_VERSION=$TORCH_VERSION")
[ -n "${TORCH_INDEX:-}" ] && common+=(--build-arg "TORCH_INDEX=$TORCH_INDEX")
[ -n "${LLAMA3_TOKENIZER_NPM:-}" ] && common+=(--build-arg "LLAMA3_TOKENIZER_NPM=$LLAMA3_TOKENIZER_NPM")

build() { # NAME TAG DOCKERFILE CONTEXT [docker build args...]
    local name=$1 tag=$2 file=$3 context=$4 started previous
    shift 4
    started=$(date +%s)
    previous=$("$DOCKER" image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
    log "$name: building $tag ($file; log $LOGS/$name.log)"
    if ! "$DOCKER" build --progress=plain -f "$ROOT/$file" -t "$tag" "$@" "$context" >"$LOGS/$name.log" 2>&1; then
        log "$name: FAILED; the end of $LOGS/$name.log:"
        tail -n 40 "$LOGS/$name.log" >&2
        return 1
    fi
    log "$name: $tag built in $(($(date +%s) - started)) s, $("$DOCKER" image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
    # the image this tag named before, now untagged: removed unless a container still uses it (its
    # layers stay in the build cache)
    if [ -n "$previous" ] && [ "$previous" != "$("$DOCKER" image inspect -f '{{.Id}}' "$tag")" ]; then
        "$DOCKER" image rm "$previous" >/dev/null 2>&1 || true
    fi
}

targets=("$@")
explicit=1
if [ ${#targets[@]} -eq 0 ]; then
    targets=("${ALL[@]}")
    explicit=0
fi
cuda_ok=""
runtimes=""
runtime() { # VARIANT (cpu|cuda): review-stack/runtime:VERSION-VARIANT, once per run, before its images
    local variant=$1 base=$BASE
    case " $runtimes " in *" $variant "*) return 0 ;; esac
    [ "$variant" = cuda ] && base=$CUDA_BASE
    build "runtime-$variant" "review-stack/runtime:$VERSION-$variant" images/runtime/Dockerfile "$ROOT" \
        --build-arg "BASE_IMAGE=$base" "${common[@]}"
    runtimes="$runtimes $variant"
}
service=("${secret[@]}")
[ -n "${LLAMA3_TOKENIZER_NPM:-}" ] && service+=(--build-arg "LLAMA3_TOKENIZER_NPM=$LLAMA3_TOKENIZER_NPM")
on_runtime() { # VARIANT: the build args of an image on that runtime
    runtime "$1"
    service_args=(--build-arg "RUNTIME_IMAGE=review-stack/runtime:$VERSION-$1" "${service[@]}")
}
skip() { # NAME REASON: an explicit request fails, the default set only says so
    if [ "$explicit" = 1 ]; then
        log "$1: $2"
        exit 1
    fi
    log "$1: skipped ($2)"
}
started=$(date +%s)
for target in "${targets[@]}"; do
    case "$target" in
        dataprep)
            on_runtime cpu
            build dataprep "review-stack/dataprep:$VERSION" services/dataprep/Dockerfile "$ROOT" "${service_args[@]}"
            ;;
        training)
            on_runtime cpu
            build training "review-stack/training:$VERSION" services/training/Dockerfile "$ROOT" "${service_args[@]}"
            ;;
        training-job | generation-cuda)
            if [ -z "$cuda_ok" ]; then
                if usable_base "$CUDA_BASE"; then cuda_ok=1; else cuda_ok=0; fi
            fi
            if [ "$cuda_ok" = 0 ]; then
                skip "$target" "its CUDA base $CUDA_BASE can be neither found nor pulled"
            elif [ "$target" = training-job ]; then
                on_runtime cuda
                build training-job "review-stack/training-job:$VERSION" training-job/Dockerfile "$ROOT" \
                    "${service_args[@]}"
            else
                on_runtime cuda
                build generation-cuda "review-stack/generation:$VERSION-cuda" services/generation/Dockerfile \
                    "$ROOT" --build-arg VARIANT=cuda "${service_args[@]}"
            fi
            ;;
        training-job-cpu)
            # the CUDA Dockerfile's code path on the CPU runtime (CPU torch), with the embedded base model
            on_runtime cpu
            build training-job-cpu "review-stack/training-job:$VERSION-cpu" training-job/Dockerfile "$ROOT" \
                --build-arg TRAINJOB_EXTRAS=deepspeed --build-arg EMBEDDED_MODEL=1 "${service_args[@]}"
            ;;
        review)
            build review "review-stack/review:$VERSION" services/review/Dockerfile "$ROOT" \
                --build-arg "BASE_IMAGE=$BASE" "${common[@]}"
            ;;
        generation-cpu)
            on_runtime cpu
            build generation-cpu "review-stack/generation:$VERSION-cpu" services/generation/Dockerfile "$ROOT" \
                "${service_args[@]}"
            ;;
        evaluation)
            on_runtime cpu
            build evaluation "review-stack/evaluation:$VERSION" eval-service/Dockerfile "$ROOT" "${service_args[@]}"
            ;;
        web)
            # like the review gateway: no torch, its own builder stage on the CPU base
            build web "review-stack/web:$VERSION" services/web/Dockerfile "$ROOT" \
                --build-arg "BASE_IMAGE=$BASE" "${secret[@]}"
            ;;
        tgi)
            if usable_base "$TGI_BASE"; then
                # its own context (the penalty package), and python:3.11-slim for its wheel stage
                build tgi "review-stack/tgi:$VERSION" services/penalty/docker/tgi/Dockerfile \
                    "$ROOT/services/penalty" --build-arg "TGI_IMAGE=$TGI_BASE"
            else
                skip tgi "its base $TGI_BASE can be neither found nor pulled"
            fi
            ;;
        moto)
            build moto review-stack/moto:test tests/containers/s3/Dockerfile "$ROOT" \
                --build-arg "BASE_IMAGE=$BASE" "${secret[@]}"
            ;;
        *)
            log "unknown image $target (images/build.sh --list)"
            exit 2
            ;;
    esac
done
log "done in $(($(date +%s) - started)) s"
# BuildKit keeps every builder stage (a venv of 1-2 GB each) and the pip cache: without a cap a few
# rounds of changes fill a disk. The most recent cache, what the next build reuses, stays.
if [ "${REVIEWSTACK_BUILD_CACHE_KEEP:-12GB}" != off ]; then
    "$DOCKER" builder prune -f --keep-storage "${REVIEWSTACK_BUILD_CACHE_KEEP:-12GB}" >/dev/null || true
fi
