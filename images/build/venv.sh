#!/bin/sh
# Builder step 1: /opt/venv, and the CPU build of torch in it when asked (--torch) and the base image has
# no torch. A base that ships torch (the CUDA PyTorch images) keeps its own build: the venv sees it.
#
#   venv.sh [--torch]
. "$(dirname "$0")/env.sh"

main() {
    want_torch=0
    [ "${1:-}" = --torch ] && want_torch=1
    # A base that ships torch (the CUDA PyTorch images) keeps its own build: the venv sees it
    if python3 -c 'import torch' 2>/dev/null; then
        say "the base image has torch $(python3 -c 'import torch; print(torch.__version__)'); using it"
        python3 -m venv --system-site-packages "$VENV"
    else
        python3 -m venv "$VENV"
    fi
    pip install -q --upgrade pip setuptools wheel
    if [ "$want_torch" = 1 ] && ! "$PY" -c 'import torch' 2>/dev/null; then
        : "${TORCH_VERSION:?}"
        if ls /wheelhouse/torch-"$TORCH_VERSION"[+-]*.whl >/dev/null 2>&1; then
            # the exact pin makes pip take the local +cpu build (a local label sorts above the plain
            # version); its dependencies come from the index
            say "torch $TORCH_VERSION from the wheelhouse"
            pip install -q --find-links /wheelhouse "torch==$TORCH_VERSION"
        else
            say "torch $TORCH_VERSION from $TORCH_INDEX"
            pip install -q --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION"
        fi
        "$PY" -c 'import torch; print("builder: torch", torch.__version__, "cuda", torch.version.cuda)' >&2
    fi
}

main "$@"
