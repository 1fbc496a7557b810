#!/usr/bin/env bash
# Runs `python -m launch.accelerator_bench` on a GPU machine whose Python already holds JAX (CUDA),
# PyTorch (CUDA), flax, optax and orbax, e.g. a lent machine with no network: the pure-Python
# packages it lacks travel as wheels in .whl/ (git-ignored).
#
# Prepare the wheels once, on a machine with pip access (the pins of requirements.txt):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl ml_collections==1.1.0 flax==0.12.8 optax==0.2.8
#
# Usage (from anywhere; the results go to $OUT, else work/accelerator_bench):
#   launch/accelerator_bench.sh [flags of launch.accelerator_bench, e.g. --only=mae_vit_b/bf16]
#
# Writes accelerator_bench.json (rows after every step, so a run stopped at a time limit keeps what
# it measured), accelerator_bench.md (the table and the ratios) and log.txt: three files.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/jaxmim_site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/jaxmim_site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT:-work/accelerator_bench}
mkdir -p "$out"
{ nvidia-smi -L 2>/dev/null; "$PY" -c 'import jax, flax, optax, torch; print("jax", jax.__version__, jax.devices(),
  "| flax", flax.__version__, "| optax", optax.__version__, "| torch", torch.__version__, torch.cuda.is_available())'
  "$PY" -m launch.accelerator_bench --out_dir="$out" "$@"; } 2>&1 | tee "$out/log.txt"
