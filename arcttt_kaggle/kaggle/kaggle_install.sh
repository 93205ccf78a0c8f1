#!/usr/bin/env bash
# Offline install of the arcttt-kaggle wheelhouse in a Kaggle kernel (internet off). Shipped as install.sh at the
# root of the dataset that `build_submission.py bundle` writes; the notebook's install cell runs it:
#
#   bash "$(find /kaggle/input -maxdepth 5 -name install.sh -path '*arcttt*' | head -1)"
#
# It stops (non-zero exit, one line saying what to do) before installing anything when the kernel does not
# match the wheelhouse's manifest.json: Python major.minor, NVIDIA driver >= min_driver, GPU compute
# capability >= 7.0, glibc >= min_glibc. Then it installs requirements.lock with --no-index --no-deps from the
# bundle's wheels (unpacking wheels.zip / wheels.tar* when the upload left an archive), the kit wheel, checks the
# requirements of every installed wheelhouse package (only the wheels the bundle left out, named in
# manifest.json, may be missing), and that torch is the manifest's build.
#
# Environment (all optional):
#   ARCTTT_BUNDLE        the bundle folder (holds manifest.json); default: searched under ARCTTT_INPUT
#   ARCTTT_INPUT         where datasets are mounted (default /kaggle/input; flat /kaggle/input/<slug> and nested
#                        /kaggle/input/datasets/<owner>/<slug> layouts are both found)
#   ARCTTT_PYTHON        the interpreter to install into (default: python on PATH, the kernel's)
#   ARCTTT_NVIDIA_SMI    the nvidia-smi command (default nvidia-smi; tests point it at a fake one)
#   ARCTTT_ALLOW_NO_GPU  1: where nvidia-smi is absent, warn and install anyway (local checks on a CPU machine);
#                        otherwise a kernel without a GPU stops here
#   ARCTTT_WORK          scratch folder for an unpacked wheels archive (default /tmp/arcttt-wheels)
set -euo pipefail

INPUT="${ARCTTT_INPUT:-/kaggle/input}"
PY="${ARCTTT_PYTHON:-python}"
SMI="${ARCTTT_NVIDIA_SMI:-nvidia-smi}"
WORK="${ARCTTT_WORK:-/tmp/arcttt-wheels}"
stop() { echo "install.sh: STOP: $*" >&2; exit 1; }

# 1. The bundle: the folder whose manifest.json says "kit": "arcttt-kaggle".
if [ -n "${ARCTTT_BUNDLE:-}" ]; then
  BUNDLE="$ARCTTT_BUNDLE"
  [ -f "$BUNDLE/manifest.json" ] || stop "ARCTTT_BUNDLE=$BUNDLE has no manifest.json"
else
  [ -d "$INPUT" ] || stop "no $INPUT folder: attach the arcttt-kaggle-bundle dataset to the kernel (or set ARCTTT_BUNDLE)"
  mapfile -t FOUND < <(find "$INPUT" -maxdepth 5 -name manifest.json -print0 2>/dev/null \
                        | xargs -0 -r grep -l '"kit": "arcttt-kaggle"' | sort)
  [ "${#FOUND[@]}" -gt 0 ] || stop "no arcttt-kaggle bundle (manifest.json) under $INPUT: attach the dataset built by 'build_submission.py bundle' (kernel-metadata.json dataset_sources)"
  [ "${#FOUND[@]}" -eq 1 ] || stop "several arcttt-kaggle bundles under $INPUT (${FOUND[*]}): attach one, or set ARCTTT_BUNDLE"
  BUNDLE="$(dirname "${FOUND[0]}")"
fi
echo "install.sh: bundle $BUNDLE"
field() { "$PY" -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print(" ".join(sorted(v)) if isinstance(v, dict) else v)' "$BUNDLE/manifest.json" "$1"; }
command -v "$PY" >/dev/null || stop "no '$PY' interpreter on PATH (set ARCTTT_PYTHON)"
WANT_PY="$(field python)"; WANT_CUDA="$(field cuda)"; MIN_DRIVER="$(field min_driver)"; MIN_GLIBC="$(field min_glibc)"
TORCH="$(field torch)"; LEFT_OUT="$(field left_out)"; [ "$(field with_wheels)" = "True" ] \
  || stop "this bundle was built with --no-wheels: rebuild it without --no-wheels and upload it again"

# 2. The kernel against the manifest, before anything is installed.
HAVE_PY="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$HAVE_PY" = "$WANT_PY" ] || stop "this wheelhouse is for Python $WANT_PY, the kernel runs $HAVE_PY: rebuild with 'build_submission.py bundle --python $HAVE_PY' or pin the image (--docker-pinning original)"
vge() { "$PY" -c 'import sys; t=lambda s: tuple(int(x) for x in s.split(".") if x.isdigit()); sys.exit(0 if t(sys.argv[1]) >= t(sys.argv[2]) else 1)' "$1" "$2"; }
if command -v "$SMI" >/dev/null 2>&1; then
  DRIVER="$("$SMI" --query-gpu=driver_version --format=csv,noheader | head -1 | tr -d ' ')"
  [ -n "$DRIVER" ] || stop "$SMI printed no driver version"
  vge "$DRIVER" "$MIN_DRIVER" || stop "this wheelhouse is CUDA $WANT_CUDA and needs driver >= $MIN_DRIVER, the kernel has $DRIVER: rebuild with 'build_submission.py bundle --cuda 12'"
  CAPS="$("$SMI" --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d ' ' | sort -u | tr '\n' ' ' || true)"
  for cap in $CAPS; do
    vge "$cap" "7.0" || stop "the GPU has compute capability $cap (a P100 is 6.0): torch $TORCH has no kernels for it; the kernel did not get its accelerator (kernel-metadata.json machine_shape $(field machine_shape))"
  done
  echo "install.sh: driver $DRIVER (>= $MIN_DRIVER for CUDA $WANT_CUDA), GPU compute capability ${CAPS:-unknown}"
elif [ "${ARCTTT_ALLOW_NO_GPU:-0}" = "1" ]; then
  echo "install.sh: WARNING: no $SMI: no NVIDIA GPU here, driver not checked (ARCTTT_ALLOW_NO_GPU=1)"
else
  stop "no $SMI: this kernel has no NVIDIA GPU (accelerator off?); set the accelerator, or ARCTTT_ALLOW_NO_GPU=1 to install anyway"
fi
GLIBC="$("$PY" -c 'import platform; print(platform.libc_ver()[1] or "0")')"
[ -z "$MIN_GLIBC" ] || vge "$GLIBC" "$MIN_GLIBC" || stop "the wheels need glibc >= $MIN_GLIBC, the kernel has $GLIBC: pin a newer image"

# 3. The wheels: a folder, or the archive an upload left (Kaggle unpacks --dir-mode zip archives into folders).
WHEELS="$BUNDLE/wheels"
if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  ARCHIVE="$(ls "$BUNDLE"/wheels.zip "$BUNDLE"/wheels.tar "$BUNDLE"/wheels.tar.gz 2>/dev/null | head -1 || true)"
  [ -n "$ARCHIVE" ] || stop "no wheels/ folder and no wheels archive in $BUNDLE: upload with 'kaggle datasets create -p OUT/dataset --dir-mode zip'"
  rm -rf "$WORK" && mkdir -p "$WORK"
  case "$ARCHIVE" in
    *.zip) "$PY" -m zipfile -e "$ARCHIVE" "$WORK" ;;
    *) tar -xf "$ARCHIVE" -C "$WORK" ;;
  esac
  WHEELS="$(dirname "$(find "$WORK" -name '*.whl' | head -1)")"
  echo "install.sh: unpacked $ARCHIVE"
fi
HAVE_N="$(ls "$WHEELS"/*.whl | wc -l)"; WANT_N="$(field wheel_count)"
[ "$HAVE_N" = "$WANT_N" ] || stop "the wheelhouse has $HAVE_N of $WANT_N wheels: the upload was incomplete; upload again with --dir-mode zip"

# 4. Install: only these wheels (no index, no pip configuration of the image), exactly the lock, then the kit.
PIPI=(env PIP_CONFIG_FILE=/dev/null "$PY" -m pip --isolated --disable-pip-version-check install -q --no-index --no-deps --find-links "$WHEELS")
"${PIPI[@]}" -r "$BUNDLE/requirements.lock"
"${PIPI[@]}" "$WHEELS"/arcttt_kaggle-*.whl

# 5. Every installed wheelhouse package has its requirements (the left-out wheels excepted), torch is ours.
#    (-I: the working folder, e.g. a source checkout with an .egg-info, must not stand in for site-packages)
"$PY" -I - "$BUNDLE/requirements.lock" "$TORCH" $LEFT_OUT <<'EOF'
import re, sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:  # packaging is in every wheelhouse lock; pip's vendored copy serves a bare interpreter
    from pip._vendor.packaging.requirements import Requirement
lock, torch, left_out = sys.argv[1], sys.argv[2], set(sys.argv[3:])
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
names = [norm(m.group(1)) for m in (re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", l) for l in open(lock)) if m]
problems = []
for name in names + ["arcttt-kaggle"]:
    for req in metadata.requires(name) or []:
        r = Requirement(req)
        if r.marker and not r.marker.evaluate({"extra": ""}):
            continue
        if norm(r.name) in left_out:
            continue
        try:
            have = metadata.version(r.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} requires {r} (not installed)")
            continue
        if not r.specifier.contains(have, prereleases=True):
            problems.append(f"{name} requires {r}, installed {have}")
have_torch = metadata.version("torch")
if have_torch.split("+")[0] != torch or "+cpu" in have_torch:
    problems.append(f"torch {have_torch} is installed, the wheelhouse's is {torch}")
if problems:
    sys.exit("install.sh: STOP: " + "; ".join(problems))
EOF
echo "install.sh: installed torch $TORCH, vllm $(field vllm), unsloth $(field unsloth), arcttt-kaggle $(field kit_version) (Python $HAVE_PY, CUDA $WANT_CUDA)${LEFT_OUT:+; left out (manifest.json says why): $LEFT_OUT}"
