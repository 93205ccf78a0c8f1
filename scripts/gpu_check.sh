#!/usr/bin/env bash
# The GPU check of the kit's transformers/PEFT paths on a lent GPU machine (never in CI): PEFT training in fp16
# (GradScaler) and bf16, the transformers decoder, the scorer and a whole run() with the transformers backends,
# on a random-weight model of Qwen2.5-0.5B's shape; prints one table. A few minutes on one GPU.
#
#   bash scripts/gpu_check.sh                       # on the GPU machine, its preinstalled torch/transformers/peft
#   bash scripts/gpu_check.sh --tokenizer DIR       # with a tokenizer folder carried there (see the module doc)
#   bash scripts/gpu_check.sh --cpu                 # smoke mode on a CPU-only machine (tiny widths)
#
# Uses .venv/bin/python when present (the dev machine), else the machine's python3; the kit is imported from
# the working tree (no install). Extra arguments go to benchmarks/gpu_check.py (--steps N, --json PATH); with
# $OUT set, the rows are also written to $OUT/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
ARGS=("$@")
[ -n "${OUT:-}" ] && ARGS+=(--json "$OUT/gpu_check.json")
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" benchmarks/gpu_check.py "${ARGS[@]}"
