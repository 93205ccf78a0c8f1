"""The Kaggle bundle: targets, kernel metadata, manifest, download isolation, +cpu refusal, the binary (ABI)
check on small synthetic wheels, and the real install script / install cell stopping on a mismatched kernel.

No downloads here: scripts/check_bundle.sh builds real wheelhouses (GBs) and installs one.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import nbformat
import pytest

from arcttt_kaggle.kaggle import bundle as B
from arcttt_kaggle.kaggle.dryrun import NOTEBOOK, REPO
from arcttt_kaggle.kaggle.wheel_abi import ElfError, abi_problems, cpu_wheels, elf_needed, scan_wheel, unverified

INSTALL = REPO / "arcttt_kaggle" / "kaggle" / "kaggle_install.sh"
PY_MM = f"{sys.version_info[0]}.{sys.version_info[1]}"


# --- synthetic ELF shared objects and wheels -------------------------------------------------------------------

def make_elf(needed: list[str]) -> bytes:
    """A minimal 64-bit little-endian ELF shared object: one PT_LOAD over the file, a PT_DYNAMIC with DT_NEEDED
    entries and DT_STRTAB; no section headers (the loader does not need them either)."""
    strtab = b"\x00"
    offs = []
    for n in needed:
        offs.append(len(strtab))
        strtab += n.encode() + b"\x00"
    str_off = 64 + 2 * 56
    dyn_off = (str_off + len(strtab) + 7) // 8 * 8
    dyn = b"".join(struct.pack("<qQ", 1, o) for o in offs) + struct.pack("<qQ", 5, str_off) + struct.pack("<qQ", 0, 0)
    total = dyn_off + len(dyn)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 64, 0, 0, 64, 56, 2, 64, 0, 0)
    ph_load = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, total, total, 0x1000)
    ph_dyn = struct.pack("<IIQQQQQQ", 2, 6, dyn_off, dyn_off, dyn_off, len(dyn), len(dyn), 8)
    body = header + ph_load + ph_dyn + strtab
    return body + bytes(dyn_off - len(body)) + dyn


def make_wheel(folder: Path, name: str, version: str, *, sos: dict[str, list[str]] | None = None,
               requires: list[str] = (), files: dict[str, str] | None = None, tag: str = "py3-none-any") -> Path:
    """A wheel with METADATA (Requires-Dist), shared objects with the given DT_NEEDED, and extra text files."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name.replace('-', '_')}-{version}-{tag}.whl"
    dist = f"{name.replace('-', '_')}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name.replace('-', '_')}/__init__.py", "")
        for so, needed in (sos or {}).items():
            z.writestr(f"{name.replace('-', '_')}/{so}", make_elf(needed))
        for rel, text in (files or {}).items():
            z.writestr(rel, text)
        z.writestr(f"{dist}/METADATA", meta)
        z.writestr(f"{dist}/WHEEL", f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n")
        z.writestr(f"{dist}/RECORD", "")
    return path


TORCH_EXT = ["libc10.so", "libtorch.so", "libtorch_cpu.so"]


# --- ELF reader -------------------------------------------------------------------------------------------------

def test_elf_needed_reads_the_dynamic_section_of_a_synthetic_object():
    assert elf_needed(make_elf(["libcudart.so.12", "libc10.so", "libc.so.6"])) == ["libcudart.so.12", "libc10.so", "libc.so.6"]
    assert elf_needed(make_elf([])) == []
    with pytest.raises(ElfError):
        elf_needed(b"not an elf file at all, long enough to have a header......................")


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) not installed: no reference to compare with")
def test_elf_needed_agrees_with_readelf_on_real_libraries():
    import torch

    libs = sorted((Path(torch.__file__).parent / "lib").glob("*.so*"), key=lambda p: p.stat().st_size)[:4]
    assert libs, "torch ships shared libraries"
    for lib in libs:
        out = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
        expected = [line.split("[", 1)[1].split("]", 1)[0] for line in out.splitlines() if "(NEEDED)" in line]
        assert elf_needed(lib.read_bytes()) == expected, lib.name


# --- the ABI rules on synthetic wheels ---------------------------------------------------------------------------

def test_xformers_built_for_torch_2_10_cu128_is_left_out_of_a_torch_2_13_cu13_wheelhouse(tmp_path):
    w = make_wheel(tmp_path, "xformers", "0.0.35", sos={"_C.so": TORCH_EXT + ["libcudart.so.12"]},
                   files={"xformers/cpp_lib.json": json.dumps({"version": {"cuda": 1208, "torch": "2.10.0+cu128", "python": "3.10.19"}, "env": {}})},
                   tag="cp39-abi3-manylinux_2_28_x86_64")
    s = scan_wheel(w)
    assert s.torch_linked and s.torch_build == "2.10.0+cu128" and s.cuda_build == 12 and s.cuda_needed == {12}
    assert "links CUDA 12" in abi_problems([s], cuda=13, torch_version="2.13.0")["xformers"]
    assert abi_problems([s], cuda=12, torch_version="2.10.0") == {}


def test_a_torch_extension_built_for_another_torch_is_caught_even_without_cuda_libraries(tmp_path):
    w = make_wheel(tmp_path, "xformers", "0.0.35", sos={"_C.so": TORCH_EXT},
                   files={"xformers/cpp_lib.json": json.dumps({"version": {"torch": "2.10.0+cu128"}})})
    assert "built for torch 2.10.0+cu128" in abi_problems([scan_wheel(w)], cuda=12, torch_version="2.13.0")["xformers"]


def test_torchaudio_release_family_must_match_torch(tmp_path):
    s = scan_wheel(make_wheel(tmp_path, "torchaudio", "2.11.0", sos={"lib/_torchaudio.so": TORCH_EXT}))
    assert s.torch_build == "2.11"
    assert "torch 2.13.0" in abi_problems([s], cuda=13, torch_version="2.13.0")["torchaudio"]
    assert abi_problems([s], cuda=13, torch_version="2.11.0") == {}
    tv = scan_wheel(make_wheel(tmp_path, "torchvision", "0.28.0", sos={"_C.so": TORCH_EXT}))
    assert tv.torch_build == "2.13" and abi_problems([tv], cuda=13, torch_version="2.13.0") == {}


def test_an_exact_torch_pin_proves_the_build_and_an_unproven_extension_is_reported(tmp_path):
    pinned = scan_wheel(make_wheel(tmp_path, "vllm", "0.32.0", sos={"_C.abi3.so": TORCH_EXT + ["libcudart.so.13"]},
                                   requires=["torch==2.13.0", "numpy"]))
    assert pinned.torch_build == "2.13.0" and abi_problems([pinned], cuda=13, torch_version="2.13.0") == {}
    unknown = scan_wheel(make_wheel(tmp_path, "mystery-ext", "1.0", sos={"_ext.so": TORCH_EXT}, requires=["torch>=2"]))
    assert abi_problems([unknown], cuda=13, torch_version="2.13.0") == {}  # not proven wrong: kept, and named
    assert "no stated torch build" in unverified([unknown, pinned], {})["mystery-ext"] and "vllm" not in unverified([pinned], {})


def test_cuda_majors_from_needed_and_local_versions(tmp_path):
    multi = scan_wheel(make_wheel(tmp_path, "bitsandbytes", "0.50.2", sos={
        "libbitsandbytes_cuda128.so": ["libcudart.so.12", "libcublas.so.12"],
        "libbitsandbytes_cuda130.so": ["libcudart.so.13", "libcublasLt.so.13"]}))
    assert multi.cuda_needed == {12, 13} and abi_problems([multi], cuda=12, torch_version="2.10.0") == {}
    cu12_only = scan_wheel(make_wheel(tmp_path, "nvidia-thing-cu12", "1.0", sos={"libx.so": ["libnvrtc.so.12"]}))
    assert "target CUDA 13" in abi_problems([cu12_only], cuda=13, torch_version="2.13.0")["nvidia-thing-cu12"]
    # cufft/curand version their soname on their own scale: libcufft.so.11 ships with CUDA 12, not CUDA 11
    own_scale = scan_wheel(make_wheel(tmp_path, "fftlib", "1.0", sos={"libf.so": ["libcufft.so.11", "libcurand.so.10"]}))
    assert own_scale.cuda_needed == frozenset() and abi_problems([own_scale], cuda=12, torch_version="2.10.0") == {}
    local = scan_wheel(make_wheel(tmp_path, "torchlike", "2.10.0+cu128"))
    assert local.cuda_build == 12 and "built for CUDA 12" in abi_problems([local], cuda=13, torch_version="2.13.0")["torchlike"]
    pure = scan_wheel(make_wheel(tmp_path, "tqdm", "4.67.1"))
    assert abi_problems([pure], cuda=13, torch_version="2.13.0") == {}


def test_cpu_wheels_are_refused():
    names = ["torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "torch-2.13.0-cp312-cp312-manylinux_2_28_x86_64.whl",
             "tqdm-4.67.1-py3-none-any.whl"]
    assert cpu_wheels(names) == [names[0]]


def test_cpu_wheel_is_an_abi_problem_too(tmp_path):
    s = scan_wheel(make_wheel(tmp_path, "torch", "2.13.0+cpu"))
    assert "CPU build" in abi_problems([s], cuda=13, torch_version="2.13.0")["torch"]


# --- download, targets, metadata ---------------------------------------------------------------------------------

def test_platform_tags_cover_every_manylinux_the_target_accepts():
    tags = B.platform_tags()
    assert tags[:2] == ["manylinux_2_17_x86_64", "manylinux_2_18_x86_64"] and "manylinux_2_35_x86_64" in tags
    assert len([t for t in tags if t.startswith("manylinux_2_")]) == 19   # 2_17 … 2_35
    for needed in ("manylinux_2_24_x86_64", "manylinux_2_27_x86_64", "manylinux_2_31_x86_64",
                   "manylinux2014_x86_64", "linux_x86_64", "any"):
        assert needed in tags


def test_download_ignores_the_local_pip_configuration(tmp_path):
    cmd = B.download_command("3.12", Path("lock.txt"), tmp_path)
    assert cmd[cmd.index("--index-url") + 1] == "https://pypi.org/simple" and "--isolated" in cmd
    assert "--only-binary=:all:" in cmd and "--no-deps" in cmd and cmd[cmd.index("--python-version") + 1] == "3.12"
    assert cmd.count("--platform") == len(B.platform_tags())
    env = B.pip_isolated_env({"PIP_FIND_LINKS": "/opt/wheels", "PIP_EXTRA_INDEX_URL": "file:///x", "HOME": "/root"})
    assert env["PIP_CONFIG_FILE"] == os.devnull and env["HOME"] == "/root"
    assert not [k for k in env if k.startswith("PIP_") and k != "PIP_CONFIG_FILE"]
    # pip itself, under that environment, sees no configuration at all (this machine has find-links in its config)
    shown = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                           env=B.pip_isolated_env(), check=True).stdout
    assert shown.split() == [f":env:.config-file='{os.devnull}'"]  # no find-links, extra index or constraint


def test_one_lock_per_target_and_cuda_12_pins_a_cuda_12_engine():
    for py in B.PYTHONS:
        for cu in B.CUDAS:
            pins = B.lock_pins(B.lock_path(py, cu).read_text())
            assert {"torch", "vllm", "unsloth", "transformers"} <= set(pins), (py, cu)
            assert not any("+cpu" in v for v in pins.values())
            assert pins["vllm"] == ("0.19.1" if cu == 12 else "0.32.0") and pins["torch"] == ("2.10.0" if cu == 12 else "2.13.0")
            assert ("nvidia-cuda-runtime-cu12" in pins) == (cu == 12) and ("nvidia-cuda-runtime" in pins) == (cu == 13)


def test_config_rejects_unknown_targets():
    for bad in ({"python": "3.10"}, {"cuda": 11}, {"accelerator": "p100"}, {"model_dataset": "no-owner"},
                {"docker_pinning": "newest"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            B.BundleConfig(**bad)


def test_kernel_metadata_names_accelerator_competition_datasets_and_image_pin():
    cfg = B.BundleConfig(user="alice", model_dataset="alice/qwen-arc", accelerator="l4x4", docker_pinning="original")
    m = B.kernel_metadata(cfg)
    assert m["machine_shape"] == "NvidiaL4" and m["enable_gpu"] is True and m["enable_internet"] is False
    assert m["competition_sources"] == ["arc-prize-2026-arc-agi-2"]
    assert m["dataset_sources"] == ["alice/arcttt-kaggle-bundle", "alice/qwen-arc"]
    assert m["docker_image_pinning_type"] == "original" and "docker_image" not in m
    t4 = B.kernel_metadata(B.BundleConfig(competition="arc-prize-2025", accelerator="t4x2"))
    assert t4["machine_shape"] == "NvidiaTeslaT4" and t4["competition_sources"] == ["arc-prize-2025"]
    assert "docker_image_pinning_type" not in t4


def test_filter_lock_drops_left_out_pins_and_says_why():
    text = "torch==2.13.0\n    # via vllm\nxformers==0.0.35\n    # via unsloth\n"
    out = B.filter_lock(text, {"xformers": "built for torch 2.10"})
    assert B.lock_pins(out) == {"torch": "2.13.0"} and "# left out: xformers==0.0.35  (built for torch 2.10)" in out


def _tree_state(paths):
    return {str(p): p.stat().st_mtime_ns for p in paths if p.exists()}


def test_bundle_without_wheels_writes_manifest_install_script_and_leaves_the_repo_clean(tmp_path):
    watched = [REPO / "build", *REPO.glob("*.egg-info"), REPO / "dist"]
    before = _tree_state(watched)
    os.chdir(tmp_path)  # a relative out_dir (as the CLI passes it) must land here, not in a temporary folder
    res = B.build_bundle(B.BundleConfig(out_dir=Path("rel-out"), python="3.11", cuda=13, with_wheels=False, user="bob"))
    tmp_path = tmp_path / "rel-out"
    assert _tree_state([REPO / "build", *REPO.glob("*.egg-info"), REPO / "dist"]) == before
    ds = tmp_path / "dataset"
    man = json.loads((ds / "manifest.json").read_text())
    assert man["kit"] == "arcttt-kaggle" and man["python"] == "3.11" and man["cuda"] == 13
    assert man["min_driver"] == "580.65.06" and man["torch"] == "2.13.0" and man["vllm"] == "0.32.0"
    assert man["unsloth"] == "2026.10.9" and man["kit_version"] == B.kit_version() and man["with_wheels"] is False
    assert (ds / "install.sh").read_text() == INSTALL.read_text()
    assert B.lock_pins((ds / "requirements.lock").read_text()) == B.lock_pins(B.lock_path("3.11", 13).read_text())
    assert res["kit_wheel"].startswith("arcttt_kaggle-") and (ds / "wheels" / res["kit_wheel"]).exists()
    with zipfile.ZipFile(ds / "wheels" / res["kit_wheel"]) as z:
        assert "arcttt_kaggle/kaggle/kaggle_install.sh" in z.namelist()  # package data: the script travels with the kit
    assert any("--dir-mode zip" in c for c in res["upload"])


# --- the install script and the notebook's install cell ----------------------------------------------------------

def fake_bundle(root: Path, **overrides) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    man = {"kit": "arcttt-kaggle", "kit_version": "0.1.0", "python": PY_MM, "cuda": 13, "min_driver": "580.65.06",
           "min_glibc": "2.17", "torch": "2.13.0", "vllm": "0.32.0", "unsloth": "2026.10.9", "with_wheels": True,
           "machine_shape": "NvidiaTeslaT4", "wheel_count": 0, "left_out": {}}
    man.update(overrides)
    (root / "manifest.json").write_text(json.dumps(man))
    shutil.copy(INSTALL, root / "install.sh")
    return root


def fake_smi(tmp_path: Path, driver: str, cap: str = "7.5") -> str:
    p = tmp_path / "nvidia-smi"
    p.write_text(f'#!/bin/sh\ncase "$*" in *driver_version*) echo "{driver}";; *compute_cap*) echo "{cap}";; esac\n')
    p.chmod(0o755)
    return str(p)


def run_install(env_extra: dict, script: Path = INSTALL) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCTTT_")}
    env.update({"ARCTTT_PYTHON": sys.executable, **env_extra})
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=300)


def test_install_stops_on_a_python_mismatch_with_the_rebuild_command(tmp_path):
    b = fake_bundle(tmp_path / "b", python="3.9")
    r = run_install({"ARCTTT_BUNDLE": str(b)})
    assert r.returncode != 0
    assert f"this wheelhouse is for Python 3.9, the kernel runs {PY_MM}: rebuild with 'build_submission.py bundle --python {PY_MM}'" in r.stderr


def test_install_stops_on_an_old_driver_a_p100_and_a_missing_gpu(tmp_path):
    b = fake_bundle(tmp_path / "b")
    old = run_install({"ARCTTT_BUNDLE": str(b), "ARCTTT_NVIDIA_SMI": fake_smi(tmp_path, "535.104.05")})
    assert old.returncode != 0 and "needs driver >= 580.65.06, the kernel has 535.104.05" in old.stderr and "--cuda 12" in old.stderr
    p100 = run_install({"ARCTTT_BUNDLE": str(b), "ARCTTT_NVIDIA_SMI": fake_smi(tmp_path, "580.95.05", "6.0")})
    assert p100.returncode != 0 and "compute capability 6.0" in p100.stderr and "NvidiaTeslaT4" in p100.stderr
    none = run_install({"ARCTTT_BUNDLE": str(b), "ARCTTT_NVIDIA_SMI": str(tmp_path / "absent-smi")})
    assert none.returncode != 0 and "no NVIDIA GPU" in none.stderr
    allowed = run_install({"ARCTTT_BUNDLE": str(b), "ARCTTT_NVIDIA_SMI": str(tmp_path / "absent-smi"),
                           "ARCTTT_ALLOW_NO_GPU": "1"})
    assert "WARNING: no" in allowed.stdout and allowed.returncode != 0 and "no wheels/ folder" in allowed.stderr


def test_install_finds_the_bundle_in_flat_and_nested_layouts_and_refuses_two(tmp_path):
    inp = tmp_path / "input"
    fake_bundle(inp / "datasets" / "alice" / "arcttt-kaggle-bundle", python="3.9")
    (inp / "competitions" / "arc-prize-2026-arc-agi-2").mkdir(parents=True)
    r = run_install({"ARCTTT_INPUT": str(inp)})
    assert f"bundle {inp}/datasets/alice/arcttt-kaggle-bundle" in r.stdout and "Python 3.9" in r.stderr
    fake_bundle(inp / "arcttt-kaggle-bundle", python="3.9")
    two = run_install({"ARCTTT_INPUT": str(inp)})
    assert two.returncode != 0 and "several arcttt-kaggle bundles" in two.stderr
    empty = run_install({"ARCTTT_INPUT": str(tmp_path / "nothing-here")})
    assert empty.returncode != 0 and "attach" in empty.stderr


def test_the_notebooks_own_install_cell_stops_on_a_python_mismatch(tmp_path):
    cell = nbformat.read(str(NOTEBOOK), as_version=4).cells[1].source
    assert cell.startswith("%%bash\nset -euo pipefail\n") and "def " not in cell
    script = tmp_path / "cell.sh"
    script.write_text(cell.split("\n", 1)[1])
    b = fake_bundle(tmp_path / "input" / "arcttt-kaggle-bundle", python="3.9")
    r = run_install({"ARCTTT_INPUT": str(tmp_path / "input")}, script)
    assert r.returncode != 0 and f"this wheelhouse is for Python 3.9, the kernel runs {PY_MM}" in r.stderr
    r2 = run_install({"ARCTTT_BUNDLE": str(b)}, script)
    assert r2.returncode != 0 and "Python 3.9" in r2.stderr
    local = run_install({"ARCTTT_INPUT": str(tmp_path / "no-such-dir")}, script)
    assert local.returncode == 0 and "not on Kaggle, using the installed environment" in local.stdout


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("venv")
    venv.create(d, with_pip=True)
    return d / "bin" / "python"


def test_install_from_a_zipped_wheelhouse_into_a_fresh_venv_tolerates_only_left_out_wheels(tmp_path, fresh_venv):
    wh = tmp_path / "wheels"
    make_wheel(wh, "torch", "2.13.0")
    make_wheel(wh, "tinypkg", "1.0", requires=["torch==2.13.0", "xformers>=0.0.30"])
    make_wheel(wh, "arcttt-kaggle", "0.1.0", requires=["tinypkg"])
    b = fake_bundle(tmp_path / "b", wheel_count=3, left_out={"xformers": "built for torch 2.10"})
    (b / "requirements.lock").write_text("tinypkg==1.0\n# left out: xformers==0.0.35\ntorch==2.13.0\n")
    with zipfile.ZipFile(b / "wheels.zip", "w") as z:   # what Kaggle shows when it did not unpack the archive
        for w in wh.iterdir():
            z.write(w, f"wheels/{w.name}")
    env = {"ARCTTT_BUNDLE": str(b), "ARCTTT_PYTHON": str(fresh_venv), "ARCTTT_WORK": str(tmp_path / "work"),
           "ARCTTT_NVIDIA_SMI": fake_smi(tmp_path, "580.95.05"), "PIP_FIND_LINKS": str(tmp_path / "decoy")}
    r = run_install(env)
    assert r.returncode == 0, r.stderr
    assert "unpacked" in r.stdout and "installed torch 2.13.0" in r.stdout and "left out" in r.stdout
    # a requirement that is not left out and not installed stops the install
    make_wheel(wh, "tinypkg", "1.0", requires=["torch==2.13.0", "xformers>=0.0.30", "notshipped"])
    shutil.copy(wh / "tinypkg-1.0-py3-none-any.whl", tmp_path / "work" / "wheels")
    (b / "wheels.zip").unlink()
    shutil.copytree(tmp_path / "work" / "wheels", b / "wheels")
    subprocess.run([str(fresh_venv), "-m", "pip", "uninstall", "-q", "-y", "tinypkg"], check=True)
    bad = run_install(env)
    assert bad.returncode != 0 and "tinypkg requires notshipped (not installed)" in bad.stderr


def test_install_stops_when_a_cpu_torch_ends_up_installed(tmp_path, fresh_venv):
    wh = tmp_path / "b" / "wheels"
    make_wheel(wh, "torch", "2.13.0+cpu")
    make_wheel(wh, "arcttt-kaggle", "0.1.0")
    b = fake_bundle(tmp_path / "b", wheel_count=2)
    (b / "requirements.lock").write_text("torch==2.13.0\n")
    subprocess.run([str(fresh_venv), "-m", "pip", "uninstall", "-q", "-y", "torch"], check=False)
    r = run_install({"ARCTTT_BUNDLE": str(b), "ARCTTT_PYTHON": str(fresh_venv),
                     "ARCTTT_NVIDIA_SMI": fake_smi(tmp_path, "580.95.05")})
    assert r.returncode != 0 and "torch 2.13.0+cpu is installed" in r.stderr
