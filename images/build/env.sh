# Sourced by the builder-stage scripts of every review-stack Dockerfile (venv.sh, install.sh, assets.sh):
# one script per RUN step, each copied just before its step, so that changing one invalidates only the
# layers from that step on (and the first step, the same in every image, is built once for all of them).
#
# Only /opt/venv goes on to the runtime stage. Inputs the Dockerfiles provide:
#   /run/secrets/pip-cert   optional build secret: a CA bundle for pip and the npm fetch (a proxy's CA);
#                           used during the build only, never written into a layer
#   /wheelhouse             optional bind mount (the `wheelhouse` stage): local wheels, e.g. a CPU torch
#   /src                    constraints.txt, proto/ and the packages' folders
#   TORCH_VERSION, TORCH_INDEX, LLAMA3_TOKENIZER_NPM, NPM_REGISTRY (build args)
set -eu

VENV=/opt/venv
SRC=/src
PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore PIP_PROGRESS_BAR=off
if [ -s /run/secrets/pip-cert ]; then
    export PIP_CERT=/run/secrets/pip-cert
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 # nothing here may reach a model hub
pip() { "$PY" -m pip "$@"; }
say() { echo "builder: $*" >&2; }
