"""Preflight: what the run has to work with, checked before any engine starts; the first thing the notebook prints.

    python -m arcttt_kaggle.run.preflight [--start-engines] [--model PATH]    # the checks alone, printed

Order (``run_preflight`` follows it; ``pipeline.run`` calls the pieces with the program expert started before
the model and engine checks, which take the longest):

1. ``set_offline_env``: HF/transformers offline, Unsloth's and vLLM's usage statistics off, before any engine
   import (the names are the ones their sources read, see ``OFFLINE_ENV``);
2. ``kernel_start_time``: the budget clock starts when this process (the notebook's kernel) started, so pip
   installs and imports before ``run()`` count;
3. ``detect_gpus`` (nvidia-smi, else torch.cuda in a child process) → ``choose_preset``: 2×T4 → t4x2, 4×L4 →
   l4x4, anything else → ``gpu-auto`` derived from the GPUs; an explicit ARCTTT_PRESET wins, but a preset that
   asks for more GPUs, bf16, or more memory than exist is refused;
4. ``find_challenges``: the test challenges under /kaggle/input for the 2026, 2025 and 2024 slugs, in the flat
   and the ``competitions/`` layouts, or the file named explicitly;
5. ``check_model``: the folder, config.json, the tokenizer through ``ArcFormat`` (in a child process), the
   memory plan (``memory.plan_memory``);
6. ``probe_engines``: vLLM and Unsloth each imported — and on GPU started on a tiny request — in a child
   process (a crash or a CUDA init cannot touch this process); a failing rung hands over to the next
   (vLLM → transformers decoding, Unsloth → PEFT training) and the report keeps the exact error.

``PreflightResult.fatal`` lists what would leave the run fallback-only (no model, no engine rung, no GPU on a
GPU preset, a memory plan that does not fit); ``must_fail(result, rerun)`` says whether the run should raise
after writing its submission: on a save/interactive run (and the dry run) yes, in the competition rerun never.
What the preflight lowers short of that (an engine rung below the configured one, a refused ARCTTT_PRESET in the
rerun, the memory plan's changes) is applied by ``pipeline.planned_downgrades``, and each one makes the run's
status ``degraded`` with a reason naming what ran instead of what.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, MutableMapping, Sequence

from .config import DERIVED_PRESET, PRESETS, RunConfig, gpu_auto_preset, preset
from arcttt_kaggle.engines.memory import NO_FIT, MemoryPlan, ModelShape, plan_memory, run_from_config

# The variables the engines' own sources read (installed versions: vllm 0.32.0, unsloth 2026.10.9):
# vllm/envs.py reads VLLM_NO_USAGE_STATS ("1") and VLLM_DO_NOT_TRACK (or DO_NOT_TRACK), and
# vllm/usage/usage_lib.py:is_usage_stats_enabled turns usage reporting off on either; unsloth/models/_utils.py
# :get_statistics returns at once when UNSLOTH_DISABLE_STATISTICS is set (or HF_HUB_OFFLINE /
# TRANSFORMERS_OFFLINE is "1"); huggingface_hub and transformers read HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "UNSLOTH_DISABLE_STATISTICS": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_DO_NOT_TRACK": "1",
               "DO_NOT_TRACK": "1"}
ENGINE_MODULES = ("vllm", "unsloth", "transformers", "torch", "huggingface_hub")
CHALLENGE_SLUGS = ("arc-prize-2026-arc-agi-2", "arc-prize-2025", "arc-prize-2024")  # newest first
CHALLENGES_FILE = "arc-agi_test_challenges.json"
NVIDIA_SMI = ["nvidia-smi", "--query-gpu=name,compute_cap,memory.total,driver_version", "--format=csv,noheader,nounits"]
LADDER = {"train": ("unsloth", "peft"), "decode": ("vllm", "hf")}


class PreflightError(RuntimeError):
    """The preflight refuses the run (a preset that cannot run here, or a fallback-only result on a save run)."""


# -- 1. offline ---------------------------------------------------------------------------------------------

def is_competition_rerun() -> bool:
    """Kaggle's scoring rerun of a submitted notebook (the save run and local runs are not)."""
    return os.environ.get("KAGGLE_IS_COMPETITION_RERUN", "") not in ("", "0", "false", "False")

def set_offline_env(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set ``OFFLINE_ENV`` in ``environ``; returns the previous value of each variable that changed ('' = unset).
    Call before any engine import: vLLM and Unsloth read these when imported or started."""
    changed = {k: environ.get(k, "") for k, v in OFFLINE_ENV.items() if environ.get(k) != v}
    environ.update(OFFLINE_ENV)
    return changed


def engines_imported(modules: Mapping[str, object] | None = None) -> list[str]:
    """Engine modules already imported in this process (then the offline variables came too late for them)."""
    mods = sys.modules if modules is None else modules
    return [m for m in ENGINE_MODULES if m in mods]


# -- 2. the budget clock -------------------------------------------------------------------------------------
def parse_start_time(pid_stat: str, proc_stat: str, clock_ticks: int) -> float:
    """Epoch seconds a process started: boot time (``btime`` of /proc/stat) + field 22 of /proc/<pid>/stat
    (``starttime``, clock ticks after boot). Fields are counted after the ``)`` closing the command name, which
    may itself hold spaces and parentheses."""
    rest = pid_stat[pid_stat.rindex(")") + 2:].split()
    start_ticks = int(rest[19])  # field 22 overall; rest starts at field 3 (state)
    btime = next((int(line.split()[1]) for line in proc_stat.splitlines() if line.startswith("btime ")), None)
    if btime is None:
        raise ValueError("no btime line in /proc/stat")
    return btime + start_ticks / clock_ticks


def kernel_start_time(pid: str = "self", proc: Path = Path("/proc")) -> float:
    """When this process (the notebook kernel that calls ``run``) started, in ``time.time()`` seconds."""
    return parse_start_time((proc / pid / "stat").read_text(), (proc / "stat").read_text(), os.sysconf("SC_CLK_TCK"))


# -- 3. hardware and preset ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: float  # 7.5 = T4, 8.9 = L4, 9.0 = H100
    memory_mib: int
    driver: str

    @property
    def memory_gib(self) -> float:
        return self.memory_mib / 1024

    @property
    def bf16(self) -> bool:
        return self.compute_capability >= 8.0


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    """Lines of ``nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version
    --format=csv,noheader,nounits`` (e.g. ``Tesla T4, 7.5, 15360, 550.54.15``) to GpuInfo."""
    gpus = []
    for line in (ln.strip() for ln in text.splitlines()):
        if not line:
            continue
        parts = [p.strip() for p in line.rsplit(",", 3)]  # the name may hold commas; the other fields do not
        if len(parts) != 4:
            raise ValueError(f"unexpected nvidia-smi line {line!r}: want 'name, compute_cap, memory MiB, driver'")
        name, cc, mem, driver = parts
        try:
            gpus.append(GpuInfo(len(gpus), name, float(cc), int(float(mem)), driver))
        except ValueError as e:
            raise ValueError(f"unexpected nvidia-smi line {line!r}: {e}") from e
    return gpus


_TORCH_GPUS = """
import json, torch
out = []
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    out.append([p.name, float(f"{p.major}.{p.minor}"), p.total_memory // 2**20, torch.version.cuda or ""])
print(json.dumps(out))
"""


def detect_gpus(timeout: float = 60.0, dev: str | Path = "/dev") -> tuple[list[GpuInfo], str]:
    """(GPUs, how they were found). nvidia-smi first; else torch.cuda in a child process (so this process
    never initializes CUDA), unless Linux shows no NVIDIA device node under ``dev`` (then CUDA cannot see a GPU:
    the probe's torch import, seconds, is skipped); else none, with the reason."""
    why = []
    try:
        r = subprocess.run(NVIDIA_SMI, capture_output=True, text=True, timeout=timeout)
        if r.returncode == 0:
            return parse_nvidia_smi(r.stdout), "nvidia-smi"
        why.append(f"nvidia-smi exited {r.returncode}: {r.stderr.strip()[-200:]}")
    except (OSError, subprocess.TimeoutExpired) as e:
        why.append(f"nvidia-smi: {type(e).__name__}: {e}")
    if sys.platform.startswith("linux") and Path(dev).is_dir() and not any(Path(dev).glob("nvidia[0-9]*")):
        return [], "none (" + "; ".join(why + [f"no NVIDIA device under {dev}"]) + ")"
    try:
        r = subprocess.run([sys.executable, "-c", _TORCH_GPUS], capture_output=True, text=True, timeout=timeout)
        if r.returncode == 0:
            rows = json.loads(r.stdout.strip().splitlines()[-1])
            if rows:
                return [GpuInfo(i, n, cc, int(m), f"cuda {d}") for i, (n, cc, m, d) in enumerate(rows)], "torch.cuda"
            why.append("torch.cuda: 0 devices")
        else:
            why.append(f"torch.cuda probe exited {r.returncode}: {_last_error(r.stderr)}")
    except (OSError, subprocess.TimeoutExpired, ValueError) as e:
        why.append(f"torch.cuda probe: {type(e).__name__}: {e}")
    return [], "none (" + "; ".join(why) + ")"


@dataclass(frozen=True)
class PresetChoice:
    name: str  # a named preset or DERIVED_PRESET
    reason: str
    refused: str = ""  # why the requested preset was refused ("" = none requested, or accepted)
    requested: str = ""  # ARCTTT_PRESET as given ("" = none)


def preset_requirements(name: str) -> tuple[int, bool, float]:
    """(GPUs needed, bf16 needed, GiB per GPU needed) of a named preset; (0, False, 0) on CPU."""
    cfg = preset(name)
    if cfg.device != "cuda":
        return 0, False, 0.0
    return cfg.workers, "bfloat16" in (cfg.train.dtype, cfg.decode.dtype), cfg.gpu_memory_gib


def refusal(name: str, gpus: Sequence[GpuInfo]) -> str:
    """Why preset ``name`` cannot run on ``gpus`` ('' if it can)."""
    if name not in PRESETS:
        return f"unknown preset {name!r}; choose one of {PRESETS} (or leave ARCTTT_PRESET unset)"
    need, bf16, mem = preset_requirements(name)
    if need and len(gpus) < need:
        return f"preset {name} needs {need} GPU(s), {len(gpus)} found"
    if bf16 and not all(g.bf16 for g in gpus[:need]):
        return (f"preset {name} computes in bf16, which needs compute capability >= 8.0; found "
                f"{', '.join(f'{g.name} ({g.compute_capability})' for g in gpus[:need])}")
    if need and min(g.memory_gib for g in gpus[:need]) + 0.25 < mem:
        return f"preset {name} plans {mem} GiB per GPU, the smallest card has {min(g.memory_gib for g in gpus):.1f} GiB"
    return ""


def choose_preset(gpus: Sequence[GpuInfo], requested: str | None = None) -> PresetChoice:
    """The preset for these GPUs: ``requested`` (ARCTTT_PRESET) if it can run here; else 2×T4 → t4x2,
    4×L4 → l4x4, no GPU → cpu-tiny, anything else → gpu-auto. A refused request is kept in ``refused``."""
    refused = refusal(requested, gpus) if requested else ""
    if requested and not refused:
        return PresetChoice(requested, "ARCTTT_PRESET", "", requested)
    names = {g.name for g in gpus}
    if not gpus:
        auto = PresetChoice("cpu-tiny", "no GPU found")
    elif len(gpus) == 2 and all("T4" in n for n in names):
        auto = PresetChoice("t4x2", "2 x T4")
    elif len(gpus) == 4 and all("L4" in n for n in names):
        auto = PresetChoice("l4x4", "4 x L4")
    else:
        auto = PresetChoice(DERIVED_PRESET, f"{len(gpus)} x {'/'.join(sorted(names))}: derived from the GPUs")
    return PresetChoice(auto.name, auto.reason, refused, requested or "")


def config_for(choice: PresetChoice, gpus: Sequence[GpuInfo], **paths) -> RunConfig:
    """The RunConfig of a choice; gpu-auto takes its dials from the smallest card (memory and capability)."""
    if choice.name == DERIVED_PRESET:
        return gpu_auto_preset(len(gpus), min(g.compute_capability for g in gpus), min(g.memory_gib for g in gpus),
                               **paths)
    return preset(choice.name, **paths)


# -- 4. challenges ------------------------------------------------------------------------------------------
def find_challenges(explicit: str | Path | None = None, input_root: str | Path = "/kaggle/input",
                    slugs: Sequence[str] = CHALLENGE_SLUGS, filename: str = CHALLENGES_FILE) -> Path:
    """The test challenges file: ``explicit`` if given (it must exist), else the first of
    ``<root>/<slug>/<file>`` and ``<root>/competitions/<slug>/<file>`` over ``slugs`` (newest first), else any
    ``<file>`` at most three folders under ``root``. The error lists everything searched."""
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise FileNotFoundError(f"challenges file {p} (named explicitly) does not exist")
        return p
    root = Path(input_root)
    searched = []
    for slug in slugs:
        for folder in (root / slug, root / "competitions" / slug):
            searched.append(folder / filename)
            if searched[-1].is_file():
                return searched[-1]
    found = sorted(p for depth in ("*", "*/*", "*/*/*") for p in root.glob(f"{depth}/{filename}") if p.is_file())
    if found:
        return found[0]
    searched.append(root / "**(3 levels)" / filename)
    present = sorted(p.name for p in root.iterdir()) if root.is_dir() else f"{root} does not exist"
    raise FileNotFoundError(f"no {filename} found; searched: {', '.join(map(str, searched))}; {root} holds: "
                            f"{present}. Attach the competition, or name the file (ARCTTT_CHALLENGES).")


# -- child processes ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeResult:
    name: str
    ok: bool
    seconds: float
    error: str = ""  # the exact error: the last line of the child's traceback, a signal, or a timeout
    detail: str = ""  # the child's stderr tail
    output: str = ""  # the child's last stdout line (a version, a JSON result)


def _last_error(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def run_child(name: str, code: str, timeout: float, env: Mapping[str, str] | None = None,
              args: Sequence[str] = ()) -> ProbeResult:
    """Run ``code`` in a fresh interpreter; ok when it exits 0. A crash, a signal or a hang is a result here."""
    t0 = time.time()
    try:
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                           env=None if env is None else dict(env))
    except subprocess.TimeoutExpired as e:
        tail = (e.stderr or b"")[-2000:]
        return ProbeResult(name, False, time.time() - t0, f"timed out after {timeout:.0f}s",
                           tail.decode(errors="replace") if isinstance(tail, bytes) else tail)
    out = r.stdout.strip().splitlines()
    if r.returncode == 0:
        return ProbeResult(name, True, time.time() - t0, output=out[-1] if out else "")
    if r.returncode < 0:
        error = f"killed by signal {signal.Signals(-r.returncode).name}"
    else:
        error = _last_error(r.stderr) or f"exited with code {r.returncode}"
    return ProbeResult(name, False, time.time() - t0, error, r.stderr[-2000:], out[-1] if out else "")


# -- 5. model -----------------------------------------------------------------------------------------------
_TOKENIZER_CHECK = """
import json, sys
from transformers import AutoTokenizer
from arcttt_kaggle.engines.format import ArcFormat
fmt = ArcFormat.for_model(AutoTokenizer.from_pretrained(sys.argv[1]), sys.argv[1])
print(json.dumps({"digits": fmt.digit_ids, "eos": fmt.eos_id}))
"""


@dataclass(frozen=True)
class ModelCheck:
    path: str
    ok: bool
    error: str = ""
    shape: ModelShape | None = None
    tokenizer: ProbeResult | None = None
    memory: MemoryPlan | None = None


def check_model(model: str | Path, cfg: RunConfig, gpu_memory_gib: float | None = None, tasks: int = 120,
                timeout: float = 300.0, env: Mapping[str, str] | None = None) -> ModelCheck:
    """Folder exists, config.json reads, the tokenizer passes ``ArcFormat`` (child process: transformers is
    not imported here), and the memory plan for ``cfg`` (on ``gpu_memory_gib``, default the preset's) fits."""
    path = Path(model)
    if not path.is_dir():
        return ModelCheck(str(path), False, f"model folder {path} does not exist (attach the model dataset)")
    try:
        shape = ModelShape.from_dir(path)
    except (OSError, ValueError) as e:
        return ModelCheck(str(path), False, f"config.json: {e}")
    tok = run_child("tokenizer", _TOKENIZER_CHECK, timeout, env, [str(path)])
    mem = plan_memory(shape, run_from_config(cfg, gpu_memory_gib, tasks=tasks,
                                             model_copy_bytes=_model_bytes(path) if cfg.model == "tiny" else 0.0))
    error = "" if tok.ok else f"tokenizer: {tok.error}"
    if mem.verdict == NO_FIT:
        error = "; ".join(filter(None, [error, "memory: " + "; ".join(mem.changes)]))
    return ModelCheck(str(path), not error, error, shape, tok, mem)


def _model_bytes(path: Path) -> float:
    return float(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()))


def memory_overrides(memory, cfg: RunConfig) -> dict:
    """The config changes the memory plan chose (``memory.MemoryPlan.settings``) that differ from ``cfg``: shorter
    sequences, fewer LoRA slots, 4-bit decoding, no TTT, fewer adapters, no product-of-experts scoring."""
    if not memory.changes:
        return {}
    d, out = cfg.to_dict(), {}
    for key, value in memory.settings().items():
        section, _, name = key.partition(".")
        if name and name in d.get(section, {}) and d[section][name] != value:
            out[key] = value
        elif not name and key in d and not isinstance(d[key], dict) and d[key] != value:
            out[key] = value  # run_ttt, max_adapters
    if memory.settings().get("poe_scoring") is False and cfg.select.method == "poe":
        out["select.method"] = "two_level"  # no memory for the scorer: vote instead
    return out



# -- 6. engines ---------------------------------------------------------------------------------------------
def probe_code(rung: str, model: str | None, start: bool, dtype: str = "auto", decode=None) -> str:
    """The child's code for one rung: import it; with ``start`` also start it on ``model`` (vLLM: an engine
    generating 1 token, with the run's decode settings when ``decode`` (a ``DecodeConfig``) is given: its
    gpu_memory_utilization, max_model_len and LoRA slots, so a model that passes the probe starts in the run,
    and one whose weights pass a fixed share of the card is not refused for it; else a small engine at 0.5 of
    the card; Unsloth: from_pretrained in 4-bit)."""
    if rung == "vllm":
        body = "import vllm\nv = vllm.__version__\n"
        if start:
            util, length, loras, rank = ((decode.gpu_memory_utilization, decode.max_model_len, decode.max_loras,
                                          decode.max_lora_rank) if decode is not None else (0.5, 256, 1, 8))
            body += (f"from vllm import LLM, SamplingParams\n"
                     f"llm = LLM(model={model!r}, max_model_len={length}, enforce_eager=True, dtype={dtype!r}, "
                     f"gpu_memory_utilization={util}, enable_lora=True, max_loras={loras}, "
                     f"max_lora_rank={rank})\n"
                     f"out = llm.generate(['0'], SamplingParams(max_tokens=1))\n"
                     f"assert len(out[0].outputs[0].token_ids) == 1, out\n")
    elif rung == "unsloth":
        body = "import unsloth\nv = unsloth.__version__\n"
        if start:
            body += (f"from unsloth import FastLanguageModel\n"
                     f"m, t = FastLanguageModel.from_pretrained(model_name={model!r}, max_seq_length=256, "
                     f"dtype=None, load_in_4bit=True)\n")
    elif rung == "peft":
        body = "import peft, transformers\nv = f'peft {peft.__version__}, transformers {transformers.__version__}'\n"
    elif rung == "hf":
        body = "import transformers\nv = f'transformers {transformers.__version__}'\n"
    else:
        raise ValueError(f"unknown engine rung {rung!r}; one of {LADDER}")
    return body + "print(v)\n"


@dataclass(frozen=True)
class EngineLadder:
    """Per stage the rung that runs (None: none works) and the exact error of each rung above it."""

    train: tuple[str | None, str]
    decode: tuple[str | None, str]
    probes: tuple[ProbeResult, ...]

    def as_dict(self) -> dict[str, tuple[str | None, str]]:
        return {"train": self.train, "decode": self.decode}


def probe_engines(model: str | None, start: bool, timeout: float = 600.0, env: Mapping[str, str] | None = None,
                  stages: Sequence[str] = ("train", "decode"), dtype: str = "auto", decode=None) -> EngineLadder:
    """Walk each stage's ladder (train: unsloth → peft; decode: vllm → hf), one child process per rung, until
    a rung works. ``start``: the top rungs are started on ``model`` (GPU presets), else imported only;
    ``decode``: the run's ``DecodeConfig`` (after the memory plan), which the vLLM probe starts with."""
    probes: list[ProbeResult] = []
    result: dict[str, tuple[str | None, str]] = {}
    for stage in ("train", "decode"):
        if stage not in stages:
            result[stage] = (None, "not probed")
            continue
        errors = []
        result[stage] = (None, "")
        for i, rung in enumerate(LADDER[stage]):
            p = run_child(rung, probe_code(rung, model, start and i == 0, dtype, decode), timeout, env)
            probes.append(p)
            if p.ok:
                result[stage] = (rung, "; ".join(errors))
                break
            errors.append(f"{rung}: {p.error}")
        else:
            result[stage] = (None, "; ".join(errors))
    return EngineLadder(result["train"], result["decode"], tuple(probes))


# -- the result ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreflightResult:
    """Everything the preflight found. ``fatal``: reasons the run would be fallback-only."""

    preset: PresetChoice
    gpus: tuple[GpuInfo, ...]
    gpu_source: str
    device: str  # the chosen preset's: "cuda" or "cpu"
    kernel_start: float
    offline_env_changed: dict
    engines_imported_before: tuple[str, ...]
    challenges: str = ""
    challenges_error: str = ""
    model: ModelCheck | None = None
    engines: EngineLadder | None = None
    on_kaggle: bool = False
    seconds: float = 0.0
    fatal: tuple[str, ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())

    @classmethod
    def build(cls, **kw) -> "PreflightResult":
        """A result with ``fatal`` and ``warnings`` derived from the findings (``fatal_reasons``)."""
        r = cls(**kw)
        fatal, warn = fatal_reasons(r)
        return cls(**{**kw, "fatal": tuple(fatal), "warnings": tuple(warn)})

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.model is not None:
            d["model"] = {"path": self.model.path, "ok": self.model.ok, "error": self.model.error,
                          "shape": asdict(self.model.shape) if self.model.shape else None,
                          "params": self.model.shape.params if self.model.shape else None,
                          "tokenizer": asdict(self.model.tokenizer) if self.model.tokenizer else None,
                          "memory": self.model.memory.to_dict() if self.model.memory else None}
        if self.engines is not None:
            d["engines"] = {**self.engines.as_dict(), "probes": [asdict(p) for p in self.engines.probes]}
        d["verdict"] = self.verdict()
        return d

    @property
    def fallback_only(self) -> bool:
        return bool(self.fatal)

    def verdict(self) -> str:
        if self.fatal:
            return "FALLBACK-ONLY: " + "; ".join(self.fatal)
        return "OK" + (f" with {len(self.warnings)} warning(s)" if self.warnings else "")

    def lines(self) -> list[str]:
        """Human-readable, the verdict first."""
        out = [f"preflight: {self.verdict()}"]
        g = ", ".join(f"{x.name} (cc {x.compute_capability}, {x.memory_gib:.1f} GiB, driver {x.driver})"
                      for x in self.gpus) or "none"
        out.append(f"  hardware: {len(self.gpus)} GPU(s) [{self.gpu_source}]: {g}")
        out.append(f"  preset: {self.preset.name} ({self.preset.reason})"
                   + (f"; requested preset refused: {self.preset.refused}" if self.preset.refused else ""))
        out.append(f"  clock: kernel started {time.time() - self.kernel_start:.0f}s ago (the budget counts from there)")
        out.append(f"  offline: {', '.join(OFFLINE_ENV)} set"
                   + (f"; engines imported before: {list(self.engines_imported_before)}" if self.engines_imported_before else ""))
        out.append(f"  challenges: {self.challenges or 'NOT FOUND: ' + self.challenges_error}")
        if self.model is not None:
            m = self.model
            shape = f"{m.shape.params / 1e9:.2f}B params, vocab {m.shape.vocab}" if m.shape else ""
            out.append(f"  model: {m.path} {'OK' if m.ok else 'FAILED: ' + m.error} {shape}".rstrip())
            if m.memory is not None:
                out += ["    " + ln for ln in m.memory.lines()]
        if self.engines is not None:
            for stage in ("train", "decode"):
                rung, err = getattr(self.engines, stage)
                out.append(f"  {stage}: {rung or 'NO RUNG WORKS'}" + (f" (above it: {err})" if err else ""))
        out += [f"  warning: {w}" for w in self.warnings]
        out.append(f"  preflight took {self.seconds:.1f}s")
        return out


def fatal_reasons(r: PreflightResult) -> tuple[list[str], list[str]]:
    """(fatal, warnings). Fatal = the run could only write fallbacks (plus the program expert)."""
    fatal, warn = [], []
    wanted_gpu = r.device == "cuda" or (r.preset.requested in PRESETS and preset_requirements(r.preset.requested)[0] > 0)
    if wanted_gpu and not r.gpus:
        fatal.append(f"no GPU on a GPU preset ({r.preset.requested or r.preset.name})")
    if r.on_kaggle and not r.gpus:
        fatal.append("no GPU on Kaggle: turn the accelerator on (T4 x2 or L4 x4)")
    if not r.challenges:
        fatal.append(f"no challenges file: {r.challenges_error}")
    if r.model is not None and not r.model.ok:
        fatal.append(f"model unusable: {r.model.error}")
    if r.engines is not None:
        if r.engines.decode[0] is None and r.engines.decode[1] != "not probed":
            fatal.append(f"no decoding engine works ({r.engines.decode[1]})")
        if r.engines.train[0] is None and r.engines.train[1] != "not probed":
            warn.append(f"no training engine works ({r.engines.train[1]}): decoding with the base model")
        for stage in ("train", "decode"):
            rung, err = getattr(r.engines, stage)
            if rung is not None and err:
                warn.append(f"{stage} runs on {rung}: {err}")
    if r.preset.refused:
        warn.append(f"requested preset refused ({r.preset.refused}); running {r.preset.name}")
    if r.engines_imported_before:
        warn.append(f"{list(r.engines_imported_before)} were imported before the offline variables were set")
    if r.model is not None and r.model.memory is not None and r.model.memory.changes and r.model.ok:
        warn.append("memory plan degrades: " + "; ".join(r.model.memory.changes))
    return fatal, warn


def must_fail(result: PreflightResult, rerun: bool) -> bool:
    """Raise after the submission is written? On a save/interactive run (and the dry run, which behaves like
    one) when the run was fallback-only, so that notebook version fails and nobody submits a dud; in the
    competition rerun never (it degrades to the program expert and fallbacks)."""
    return bool(result.fatal) and not rerun


def run_preflight(requested_preset: str | None = None, challenges: str | None = None, model: str | None = None,
                  start_engines: bool | None = None, rerun: bool = False, on_kaggle: bool = False,
                  input_root: str = "/kaggle/input", timeout: float = 600.0, **paths) -> tuple[PreflightResult, RunConfig]:
    """All checks in order (see the module docstring); returns the result and the chosen config. Raises
    PreflightError when a requested preset cannot run here, except in the rerun (which takes the automatic
    choice). ``start_engines`` defaults to whether the preset is a GPU one."""
    t0 = time.time()
    changed = set_offline_env()
    before = tuple(engines_imported())
    start = kernel_start_time()
    gpus, source = detect_gpus()
    choice = choose_preset(gpus, requested_preset)
    if choice.refused and not rerun:
        raise PreflightError(f"ARCTTT_PRESET={requested_preset}: {choice.refused}")
    cfg = config_for(choice, gpus, **paths)
    found, err = "", ""
    try:
        found = str(find_challenges(challenges, input_root))
    except FileNotFoundError as e:
        err = str(e)
    model_path = model or cfg.model
    if model_path == "tiny":
        from arcttt_kaggle.engines.tinymodel import ensure_tiny_model

        model_path = str(ensure_tiny_model(Path(cfg.out_dir) / "tiny-model", cfg.tiny_model))
    mem = min((g.memory_gib for g in gpus), default=0.0) if cfg.device == "cuda" else None
    check = check_model(model_path, cfg, mem, timeout=timeout)
    start_engines = cfg.device == "cuda" if start_engines is None else start_engines
    planned = cfg.with_overrides(memory_overrides(check.memory, cfg)) if check.ok and check.memory else cfg
    ladder = probe_engines(model_path if check.ok else None, start_engines and check.ok, timeout,
                           decode=planned.decode)
    result = PreflightResult.build(preset=choice, gpus=tuple(gpus), gpu_source=source, device=cfg.device,
                                   kernel_start=start, offline_env_changed=changed, engines_imported_before=before,
                                   challenges=found, challenges_error=err, model=check, engines=ladder,
                                   on_kaggle=on_kaggle, seconds=time.time() - t0)
    return result, cfg


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="the preflight checks alone, printed")
    p.add_argument("--preset", default=os.environ.get("ARCTTT_PRESET"))
    p.add_argument("--challenges", default=os.environ.get("ARCTTT_CHALLENGES"))
    p.add_argument("--model", default=os.environ.get("ARCTTT_MODEL"))
    p.add_argument("--input-root", default="/kaggle/input")
    p.add_argument("--start-engines", action="store_true", help="start vLLM/Unsloth on the model (GPU: default)")
    a = p.parse_args(argv)
    result, _ = run_preflight(a.preset, a.challenges, a.model, a.start_engines or None, input_root=a.input_root)
    print("\n".join(result.lines()))
    return 1 if result.fatal else 0


if __name__ == "__main__":
    sys.exit(main())
