#!/usr/bin/env bash
# Build the real Kaggle wheelhouses and install one exactly as the notebook does. NOT CI: it downloads ~4 GB
# per target from PyPI and takes tens of minutes.
#
#   bash scripts/check_bundle.sh [CUDA]        # CUDA 13 (default, the engines CI tests) or 12; work folder ${CHECK_OUT:-out/check-bundle}
#   PYTHON311=/path/python3.11 PYTHON312=/path/python3.12 bash scripts/check_bundle.sh   # interpreters to use
#
# 1. `build_submission.py bundle --python 3.11` and `--python 3.12` for that CUDA (isolated from this machine's
#    pip configuration; +cpu wheels refused; ABI mismatches left out and named in manifest.json);
# 2. proves that neither wheelhouse holds a +cpu wheel;
# 3. runs the notebook's OWN install cell (cell 1, extracted from notebooks/arc_ttt_submission.ipynb) in a fresh
#    Python 3.11 venv against the 3.11 bundle, installing with --no-index. This machine has no GPU: the check
#    sets ARCTTT_ALLOW_NO_GPU=1, so install.sh prints a WARNING and skips the driver check (on Kaggle, a kernel
#    without nvidia-smi stops instead);
# 4. `pip check` in that venv (the wheels the bundle left out are the only allowed missing requirements), then
#    `import vllm`, `import unsloth`, `import arcttt_kaggle` one by one, each result printed: CUDA builds may
#    refuse to import on a machine without a GPU, and the check reports that as it is;
# 5. for 3.12: `pip install --dry-run --no-index --only-binary=:all: --python-version 3.12` of the bundle's lock
#    from its wheelhouse resolves (pip's resolver, dependencies included), run by a Python 3.12 (PYTHON312).
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA="${1:-13}"
OUT="${CHECK_OUT:-out/check-bundle}"
PY311="${PYTHON311:-python3.11}"
PY312="${PYTHON312:-python3.12}"   # step 5: pip checks Requires-Python against the interpreter it runs in
# A pyenv shim without that version selected answers "command exists in these versions": take the installed one.
if ! "$PY312" -V >/dev/null 2>&1 && command -v pyenv >/dev/null; then
  PY312="$(ls -d "$(pyenv root)"/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)"
fi
mkdir -p "$OUT"
ISO=(env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null)

for py in 3.11 3.12; do
  t0=$(date +%s)
  .venv/bin/python build_submission.py bundle --out "$OUT/py$py" --python "$py" --cuda "$CUDA" > "$OUT/bundle-py$py.log"
  ds="$OUT/py$py/dataset"
  n=$(ls "$ds"/wheels/*.whl | wc -l); gb=$(du -sb "$ds/wheels" | awk '{printf "%.2f", $1/1e9}')
  echo "check_bundle: py$py cu$CUDA bundle: $n wheels, $gb GB, $(( $(date +%s) - t0 )) s"
  .venv/bin/python -c 'import json,sys; m=json.load(open(sys.argv[1])); print("check_bundle:   manifest", {k: m[k] for k in ("python","cuda","min_driver","min_glibc","torch","vllm","unsloth","kit_version","wheel_count")}); [print("check_bundle:   left out", k, "-", v) for k, v in m["left_out"].items()]; [print("check_bundle:   unverified", k, "-", v) for k, v in m["unverified"].items()]' "$ds/manifest.json"
  if ls "$ds"/wheels/ | grep -F '+cpu'; then echo "check_bundle: FAIL: +cpu wheel in $ds/wheels" >&2; exit 1; fi
  echo "check_bundle:   no +cpu wheel"
done

# 3-4. The notebook's own install cell, in a fresh Python 3.11 venv.
VENV="$OUT/venv311"
rm -rf "$VENV"
"$PY311" -m venv "$VENV"
.venv/bin/python -c 'import json,sys; src=json.load(open(sys.argv[1]))["cells"][1]["source"]; src="".join(src); assert src.startswith("%%bash\n"); open(sys.argv[2],"w").write(src.split("\n",1)[1])' \
  notebooks/arc_ttt_submission.ipynb "$OUT/install_cell.sh"
t0=$(date +%s)
PATH="$PWD/$VENV/bin:$PATH" ARCTTT_BUNDLE="$PWD/$OUT/py3.11/dataset" ARCTTT_ALLOW_NO_GPU=1 ARCTTT_NVIDIA_SMI=nvidia-smi \
  ARCTTT_WORK="$PWD/$OUT/work" bash "$OUT/install_cell.sh"
echo "check_bundle: install cell: exit 0 in $(( $(date +%s) - t0 )) s"
LEFT=$("$VENV/bin/python" -c 'import json,sys; print("|".join(json.load(open(sys.argv[1]))["left_out"]) or "^$")' "$OUT/py3.11/dataset/manifest.json")
echo "check_bundle: pip check (left out, allowed missing: ${LEFT}):"
"${ISO[@]}" "$VENV/bin/python" -m pip check > "$OUT/pip-check.txt" 2>&1 || true
sed 's/^/check_bundle:   /' "$OUT/pip-check.txt"
if grep -v -E "No broken requirements" "$OUT/pip-check.txt" | grep -v -E "requires ($LEFT)," | grep -q .; then
  echo "check_bundle: FAIL: pip check reports more than the left-out wheels" >&2; exit 1
fi
"$VENV/bin/python" -c 'import torch; print("check_bundle: torch", torch.__version__, "CUDA build", torch.version.cuda, "cuda available", torch.cuda.is_available())'
for mod in arcttt_kaggle vllm unsloth; do
  if "$VENV/bin/python" -c "import $mod" > "$OUT/import-$mod.txt" 2>&1; then
    echo "check_bundle: import $mod: OK"
  else
    echo "check_bundle: import $mod: FAILED on this CPU-only machine, last line: $(grep -v '^\s*$' "$OUT/import-$mod.txt" | tail -1)"
  fi
done

# 5. Python 3.12: every pinned wheel installs on 3.12 (--no-deps, the install path), and pip's resolver finds
#    every requirement in the wheelhouse except the wheels the bundle left out (named in manifest.json).
ds="$OUT/py3.12/dataset"
TAGS=$(.venv/bin/python -c 'from arcttt_kaggle.kaggle.bundle import platform_tags; print(" ".join("--platform " + t for t in platform_tags()))')
LEFT312=$(.venv/bin/python -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["left_out"]))' "$ds/manifest.json")
DRY=("${ISO[@]}" "$PY312" -m pip --isolated install --dry-run --ignore-installed --no-index --only-binary=:all:
     --python-version 3.12 --implementation cp --target "$OUT/dry312" --find-links "$ds/wheels" -r "$ds/requirements.lock")
# shellcheck disable=SC2086
"${DRY[@]}" $TAGS --no-deps > "$OUT/dry312-nodeps.txt" 2>&1 \
  || { echo "check_bundle: py3.12 --no-deps dry-run FAILED:"; tail -5 "$OUT/dry312-nodeps.txt"; exit 1; }
echo "check_bundle: py3.12 dry-run --no-deps: OK, would install $(grep -o 'Would install.*' "$OUT/dry312-nodeps.txt" | wc -w | awk '{print $1-2}') packages"
# shellcheck disable=SC2086
if "${DRY[@]}" $TAGS > "$OUT/dry312.txt" 2>&1; then
  echo "check_bundle: py3.12 dry-run resolve (dependencies included): OK"
else
  miss=$(grep -o 'No matching distribution found for [A-Za-z0-9_.-]*' "$OUT/dry312.txt" | awk '{print $NF}' | sort -u)
  echo "check_bundle: py3.12 dry-run resolve (dependencies included): unresolved: ${miss:-?} (left out: ${LEFT312:-none})"
  for m in $miss; do
    [[ " $LEFT312 " == *" $m "* ]] || { echo "check_bundle: FAIL: $m is missing and was not left out" >&2; tail -3 "$OUT/dry312.txt"; exit 1; }
  done
  [ -n "$miss" ] || { echo "check_bundle: FAIL: resolve failed:"; tail -3 "$OUT/dry312.txt"; exit 1; }
  echo "check_bundle:   only left-out wheels are unresolved (installed with --no-deps, tolerated by install.sh)"
fi
echo "check_bundle: done"
