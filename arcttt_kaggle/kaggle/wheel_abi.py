"""Binary compatibility of a wheelhouse with one target (CUDA major, torch build): what ``pip check`` misses.

``pip check`` compares declared requirements only. A wheel can satisfy every requirement and still not load:
xformers 0.0.35 declares no exact torch pin, but its extension was built for torch 2.10+cu128 and does not
load beside torch 2.13+cu130; torchaudio 2.11 does not pin torch and is built for torch 2.11. This module reads
what the binaries and their build metadata say:

- every ``.so`` in a wheel: its ELF ``DT_NEEDED`` entries (a small reader of the ELF dynamic section, no
  external tool). ``libcudart.so.N`` / ``libcublas.so.N`` / ``libnvrtc.so.N`` / ``libnvJitLink.so.N`` /
  ``libcupti.so.N`` carry the CUDA major N (other CUDA libraries version their soname on their own scale);
  ``libtorch*.so`` / ``libc10*.so`` mark a torch extension, which only loads beside the torch it was built for;
- the torch build a torch extension was made for, from the first source that states it: an exact
  ``Requires-Dist: torch==X.Y.Z`` pin; a torch-extension build-info file (``*/cpp_lib.json``, written by
  xformers' build with ``torch_version`` and ``cuda_version``); the PyTorch release families whose versions
  move with torch's (torchaudio A.B ↔ torch A.B, torchvision 0.N ↔ torch 2.(N-15), from PyTorch's
  compatibility table);
- the local version (``+cpu``, ``+cu128``) of the wheel's file name.

``abi_problems`` applies the rules; a wheel it names is left out of the wheelhouse (bundle.py), with the reason
recorded in the dataset's manifest, and the install step's ``pip check`` tolerates exactly those names.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

# Libraries whose soname major is the CUDA major (cufft, cusolver, curand, cudnn, nccl use their own numbering).
CUDA_MAJOR_LIB = re.compile(r"^lib(cudart|cublas|cublasLt|nvrtc|nvJitLink|cupti)\.so\.(\d+)(\.|$)")
TORCH_LIB = re.compile(r"^lib(torch|torch_cpu|torch_cuda|torch_python|c10|c10_cuda)\.so")
# Read a shared object into memory up to this size; larger ones are copied to a temporary file first.
IN_MEMORY_LIMIT = 256 * 1024 * 1024
PT_LOAD, PT_DYNAMIC, DT_NULL, DT_NEEDED, DT_STRTAB = 1, 2, 0, 1, 5


class ElfError(ValueError):
    """A file that is not a readable 64-bit little-endian ELF shared object."""


def elf_needed(data) -> list[str]:
    """The ``DT_NEEDED`` entries of a 64-bit little-endian ELF image (``bytes`` or ``mmap``), in order.

    Reads the program headers, the ``PT_DYNAMIC`` segment and the dynamic string table (located through the
    ``PT_LOAD`` segment that maps ``DT_STRTAB``'s address). Raises ``ElfError`` on anything else.
    """
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ElfError("only 64-bit little-endian ELF is read")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return []  # a static object: needs nothing
    needed_offsets, strtab_vaddr = [], None
    off, end = dynamic[0], dynamic[0] + dynamic[1]
    while off + 16 <= end:
        tag, val = struct.unpack_from("<qQ", data, off)
        off += 16
        if tag == DT_NULL:
            break
        if tag == DT_NEEDED:
            needed_offsets.append(val)
        elif tag == DT_STRTAB:
            strtab_vaddr = val
    if not needed_offsets:
        return []
    if strtab_vaddr is None:
        raise ElfError("DT_NEEDED without DT_STRTAB")
    strtab = next((o + strtab_vaddr - v for v, o, sz in loads if v <= strtab_vaddr < v + sz), None)
    if strtab is None:
        raise ElfError("DT_STRTAB outside every PT_LOAD segment")
    out = []
    for n in needed_offsets:
        start = strtab + n
        stop = data.find(b"\x00", start)
        if stop < 0:
            raise ElfError("unterminated string in the dynamic string table")
        out.append(bytes(data[start:stop]).decode("utf-8", "replace"))
    return out


def _member_needed(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> list[str]:
    with zf.open(info) as f:
        if info.file_size <= IN_MEMORY_LIMIT:
            return elf_needed(f.read())
        import mmap  # only for the few very large libraries (torch's, CUDA's)

        with tempfile.TemporaryFile() as tmp:
            shutil.copyfileobj(f, tmp, 16 * 1024 * 1024)
            tmp.flush()
            with mmap.mmap(tmp.fileno(), 0, access=mmap.ACCESS_READ) as m:
                return elf_needed(m)


@dataclass(frozen=True)
class WheelScan:
    """What one wheel's binaries and metadata say about the CUDA and torch they were built for."""

    filename: str
    name: str                       # normalized distribution name (PEP 503)
    version: str                    # as in the file name, local part included (e.g. 2.13.0+cpu)
    cuda_needed: frozenset[int]     # CUDA majors named by DT_NEEDED of its .so files
    torch_linked: bool              # some .so needs libtorch*/libc10*: a torch extension
    torch_build: str | None         # the torch version it was built for, when a source states it
    cuda_build: int | None          # the CUDA major it was built for, when build metadata states it
    evidence: str                   # where torch_build/cuda_build came from, or which .so linked what


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_wheel_filename(filename: str) -> tuple[str, str]:
    parts = filename[:-4].split("-") if filename.endswith(".whl") else []
    if len(parts) < 5:
        raise ValueError(f"not a wheel file name: {filename!r}")
    return normalize(parts[0]), parts[1]


def local_version(version: str) -> str:
    return version.split("+", 1)[1] if "+" in version else ""


def _minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def family_torch(name: str, version: str) -> str | None:
    """The torch major.minor a PyTorch domain library release belongs to (PyTorch's compatibility table)."""
    base = version.split("+")[0].split(".")
    if name == "torchaudio" and len(base) >= 2:
        return f"{base[0]}.{base[1]}"
    if name == "torchvision" and len(base) >= 2 and base[0] == "0" and int(base[1]) >= 15:
        return f"2.{int(base[1]) - 15}"
    return None


def _build_info(zf: zipfile.ZipFile) -> tuple[str | None, int | None, str]:
    """torch/CUDA build from a torch-extension build-info file: xformers' ``cpp_lib.json``, e.g.
    ``{"version": {"cuda": 1208, "torch": "2.10.0+cu128", ...}, "env": {...}}`` (CUDA as major*100+minor)."""
    for info in zf.infolist():
        if info.filename.endswith("/cpp_lib.json"):
            try:
                data = json.loads(zf.read(info))
            except ValueError:
                continue
            ver = data.get("version", {}) if isinstance(data, dict) else {}
            torch_v = ver.get("torch") if isinstance(ver, dict) else None
            cuda_raw = ver.get("cuda") if isinstance(ver, dict) else None
            cuda = int(cuda_raw) // 100 if isinstance(cuda_raw, int) and cuda_raw >= 100 else None
            if torch_v or cuda:
                return (str(torch_v) if torch_v else None), cuda, info.filename
    return None, None, ""


def _torch_pin(zf: zipfile.ZipFile) -> str | None:
    meta = next((i for i in zf.infolist() if i.filename.endswith(".dist-info/METADATA")), None)
    if meta is None:
        return None
    headers = HeaderParser().parsestr(zf.read(meta).decode("utf-8", "replace"))
    for req in headers.get_all("Requires-Dist") or []:
        m = re.match(r"^torch\s*\(?\s*==\s*([0-9][^\s,;)]*)", req)
        if m and ";" not in req.split("==")[0]:
            return m.group(1)
    return None


def scan_wheel(path: str | Path) -> WheelScan:
    """Read every ``.so`` of a wheel (DT_NEEDED) and its build metadata."""
    path = Path(path)
    name, version = parse_wheel_filename(path.name)
    cuda, torch_linked, linked = set(), False, []
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            base = info.filename.rsplit("/", 1)[-1]
            if not re.search(r"\.so(\.\d+)*$", base) or info.is_dir():
                continue
            try:
                needed = _member_needed(zf, info)
            except ElfError:
                continue  # a linker script or a non-x86_64 object named .so: nothing to load here
            for lib in needed:
                m = CUDA_MAJOR_LIB.match(lib)
                if m:
                    cuda.add(int(m.group(2)))
                if TORCH_LIB.match(lib):
                    torch_linked = True
                    linked.append(f"{base} needs {lib}")
        torch_build, cuda_build, source = _build_info(zf)
        if torch_build is None and torch_linked:
            pin = _torch_pin(zf)
            if pin:
                torch_build, source = pin, "Requires-Dist torch==" + pin
            elif family_torch(name, version):
                torch_build, source = family_torch(name, version), f"{name} release family"
    local = local_version(version)
    if cuda_build is None and re.fullmatch(r"cu\d{3,}", local):
        cuda_build = int(local[2:-1])
    evidence = source or (linked[0] if linked else "")
    return WheelScan(path.name, name, version, frozenset(cuda), torch_linked, torch_build, cuda_build, evidence)


def cpu_wheels(filenames: list[str]) -> list[str]:
    """Wheels whose version carries a ``+cpu`` local tag (a CPU build must never reach a GPU run)."""
    return [f for f in filenames if f.endswith(".whl") and local_version(parse_wheel_filename(f)[1]) == "cpu"]


def abi_problems(scans: list[WheelScan], *, cuda: int, torch_version: str) -> dict[str, str]:
    """Wheels that would not load beside ``torch_version`` on CUDA major ``cuda``: name → reason.

    A torch extension whose build is stated (see the module docstring) must match torch's major.minor; a wheel
    whose binaries link CUDA libraries must link the target's major among them; build metadata or a ``+cuNNN``
    local version naming another CUDA major is a mismatch. Only proven mismatches are named here: a torch
    extension that states no build is reported by ``unverified`` instead (some ship one library per torch
    version and pick at run time, e.g. torch-c-dlpack-ext; leaving them out would break their importers).
    """
    problems = {}
    for s in scans:
        if local_version(s.version) == "cpu":
            problems[s.name] = f"{s.filename} is a CPU build (+cpu)"
        elif s.cuda_needed and cuda not in s.cuda_needed:
            majors = ", ".join(str(c) for c in sorted(s.cuda_needed))
            problems[s.name] = f"{s.filename} links CUDA {majors} libraries (libcudart/cublas/nvrtc.so.N); target CUDA {cuda}"
        elif s.cuda_build is not None and s.cuda_build != cuda:
            problems[s.name] = f"{s.filename} was built for CUDA {s.cuda_build} ({s.evidence or 'local version'}); target CUDA {cuda}"
        elif s.torch_linked and s.name != "torch" and s.torch_build is not None \
                and _minor(s.torch_build) != _minor(torch_version):
            problems[s.name] = (f"{s.filename} was built for torch {s.torch_build} ({s.evidence}); "
                                f"the wheelhouse has torch {torch_version}")
    return problems


def unverified(scans: list[WheelScan], problems: dict[str, str]) -> dict[str, str]:
    """Torch extensions (other than torch) that state no torch build and are not already a problem: kept in
    the wheelhouse, named in the manifest so a load failure on Kaggle points at them."""
    return {s.name: f"{s.filename}: torch extension ({s.evidence}) with no stated torch build"
            for s in scans if s.torch_linked and s.name != "torch" and s.torch_build is None and s.name not in problems}


def scans_to_json(scans: list[WheelScan]) -> str:
    return json.dumps([{**s.__dict__, "cuda_needed": sorted(s.cuda_needed)} for s in scans], indent=1)
