#!/usr/bin/env bash
# The GPU benchmarks on a bare GPU machine with no network: one bundle of what they need beyond the
# machine's torch, transformers and CUDA stack (`make gpu-bundle`).
#
# Here (a checkout with `make install` done, and network):
#   make gpu-bundle          # = bash bench/gpu_bundle.sh pack
#     .gpu/bundle/wheels/    the project's packages (the generated protos inside common's wheel) and what
#                            the benches import that the GPU image lacks: peft, deepspeed (built here
#                            without its ops: they compile on first use, none do in these benches),
#                            liger-kernel, pydantic and friends, protobuf, grpcio, structlog, hjson …,
#                            for the image's Python (PYTHON_VERSION, default 3.12)
#     .gpu/bundle/tokenizer/ the Llama-3 tokenizer (bench/serve_throughput.py --tokenizer)
#     .gpu/bundle/COMMIT     this checkout's commit: the benches record it even from a copy without .git
# Copy the checkout (tracked files) and .gpu/bundle to the GPU machine (~35 MB); there, from its root:
#   source bench/gpu_bundle.sh env      # installs the wheels into ~/gpu/site, sets PYTHONPATH and
#                                       # REVIEWSTACK_COMMIT
#   python bench/train_throughput.py --variants baseline,ours --out "$OUT/train.json"
#   python bench/serve_throughput.py --tokenizer .gpu/bundle/tokenizer --out "$OUT/serve.json"
# bench/gpu_experiment.sh carries the same wheels for an experiment run.
BUNDLE=.gpu/bundle
# what the GPU image (torch, transformers, accelerate, aiohttp, rich, matplotlib, psutil, ninja, msgpack,
# py-cpuinfo, einops …) lacks, pinned to what .venv runs here; pydantic_core and grpcio are built per Python
GPU_DEPS="pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3 typing-inspection==0.4.5
 annotated-types==0.8.0 structlog==26.1.0 gguf==0.19.0 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0
 grpcio==1.85.3 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 protobuf==7.36.2
 python-dotenv==1.2.4 kubernetes==36.0.3 durationpy==0.11 websocket-client==1.9.2 requests-oauthlib==2.0.0
 oauthlib==4.0.1 typer==0.29.2 click==8.5.1 annotated-doc==0.0.7 text-generation==0.7.0
 opentelemetry-api==1.45.3 peft==0.21.2 hjson==3.1.0 liger-kernel==0.8.5"
GPU_PACKAGES="services/common services/penalty training-job services/training services/generation
 services/review services/experiment"

# gpu_wheels DIR: every wheel above into DIR (the image's Python), the project's built from this checkout
gpu_wheels() {
    local dir=$1 python=${PYTHON_VERSION:-3.12}
    mkdir -p "$dir"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$dir" $GPU_DEPS
    for package in $GPU_PACKAGES; do # setuptools builds in the package's folder: leave none behind
        .venv/bin/pip wheel -q --no-deps --no-build-isolation -w "$dir" "./$package" && rm -rf "./$package/build"
    done
}

pack() {
    set -euo pipefail
    [ -f services/common/reviewstack/v1/review_pb2.py ] || { echo "run make install first (protos)" >&2; exit 1; }
    rm -rf "$BUNDLE" && mkdir -p "$BUNDLE"
    gpu_wheels "$BUNDLE/wheels"
    # deepspeed is an sdist: a pure-Python wheel without prebuilt ops (DS_BUILD_OPS=0), built against .venv's torch
    DS_BUILD_OPS=0 .venv/bin/pip wheel -q --no-deps --no-build-isolation -w "$BUNDLE/wheels" \
        "deepspeed==$(.venv/bin/python -c 'from importlib.metadata import version; print(version("deepspeed"))')"
    cp -r .venv/share/reviewstack/tokenizers/llama-3 "$BUNDLE/tokenizer"
    git rev-parse --short HEAD >"$BUNDLE/COMMIT"
    [ -z "$(git status --porcelain --untracked-files=no)" ] || echo "+dirty" >>"$BUNDLE/COMMIT"
    du -sh "$BUNDLE" "$BUNDLE"/* | sed 's/^/  /'
}

env_() {
    local site=${REVIEWSTACK_GPU_HOME:-$HOME/gpu}/site
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$BUNDLE"/wheels/*.whl || return 1
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH} PATH=$site/bin:$PATH
    REVIEWSTACK_COMMIT=$(tr -d '\n' <"$BUNDLE/COMMIT")
    export REVIEWSTACK_COMMIT
    echo "bundle of $REVIEWSTACK_COMMIT installed in $site"
}

case "${1:-}" in
    pack) pack ;;
    env) env_ ;;
    wheels) gpu_wheels "${2:?DIR}" ;;
    "") ;; # sourced for gpu_wheels
    *) sed -n '2,20p' "${BASH_SOURCE[0]}" ;;
esac
