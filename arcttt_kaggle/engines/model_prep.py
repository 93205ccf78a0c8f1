"""Model preparation, run once at start-up: the base model folder every engine (trainer, vLLM, scorer) loads.

``prepare_model`` decides, for a base folder and a ``FormatConfig``:

- the profile (``format.profile_of_model``: the folder's ``arc_format.json``, its reduced vocabulary, else
  ``kit``; or the one the config names);
- the vocabulary: a full-vocabulary base (more than ``REDUCED_MAX`` tokens) is copied with an embedding and
  lm_head that keep only the profile's tokens (``Layout.keep``) plus the bos/eos/pad the model and tokenizer
  name, in their original order (so a Qwen base cut for ``nvarc`` gets NVARC's own 16 ids), with a matching
  tokenizer (BPE, no merges, whole-piece lookup: every kept piece is one token), ``config.json`` and
  ``generation_config.json``. Rows are sliced from the safetensors shards directly (tied embeddings: the one
  shared matrix), so an 8B base never has to fit in memory at once. A base that arrives reduced (the
  ARChitects', NVARC's) is used as it is;
- bitsandbytes 4-bit bases (``quantization_config`` in ``config.json``, the ARChitects' published form):
  see ``quantization_plan``; ``dequantize_folder`` writes the 16-bit copy.

The prepared folder is cached under the run's output folder keyed by (source folder, its config and tokenizer
digests, profile, dequantization), built in a temporary folder renamed into place. Its ``arc_format.json``
records the profile, so every engine's ``ArcFormat.for_model`` speaks it. ``PreparedModel.card()`` is the
report's model card.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from arcttt_kaggle.arc.candidates import atomic_write_text
from .format import PROFILE_FILE, PROFILES, ArcFormat, FormatConfig, FormatSpec, layout_of, profile_of_model, single_token

REDUCED_MAX = 1024  # a tokenizer this small is taken as already reduced: the folder is used as it is
EMBED_SUFFIXES = ("embed_tokens.weight",)
HEAD_SUFFIXES = ("lm_head.weight",)


@dataclass(frozen=True)
class PreparedModel:
    """What preparation produced: the folder the engines load, and the facts of the report's model card."""

    path: str
    source: str
    profile: str
    profile_from: str  # "config", "arc_format.json", "detected from the vocabulary", "default"
    vocab_size: int
    source_vocab_size: int
    reduced: bool  # this preparation cut the vocabulary (False: it arrived reduced, or reduce_vocab is off)
    quantization: dict[str, str] = field(default_factory=dict)  # per engine: train / vllm / scorer
    seconds: float = 0.0
    cached: bool = False

    def card(self) -> dict[str, Any]:
        return asdict(self)


# -- the kept tokens and the reduced tokenizer ------------------------------------------------------------------
def kept_token_ids(tokenizer, profile: str, config_ids: dict[str, Any] | None = None) -> list[int]:
    """Old ids to keep, sorted: every ``Layout.keep`` piece (each must be one token), the tokenizer's bos/eos/pad,
    every ``*token_id`` of the model's config/generation config, and the profile's own eos; never unk."""
    lay = layout_of(FormatSpec(profile=profile))
    ids = {single_token(tokenizer, t, f"{profile} symbol") for t in lay.keep}
    if lay.eos is not None:
        ids.add(single_token(tokenizer, lay.eos, f"{profile} end of output"))
    for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id):
        if t is not None:
            ids.add(int(t))
    for v in (config_ids or {}).values():
        ids.update(int(x) for x in (v if isinstance(v, list) else [v]) if x is not None)
    if tokenizer.unk_token_id not in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id):
        ids.discard(tokenizer.unk_token_id)  # (some saved tokenizers name their eos as unk too: then it stays)
    return sorted(ids)


def _remap_specials(node, mapping: dict[int, int]):
    """Remap the ids of a post-processor's ``special_tokens`` (TemplateProcessing), recursively."""
    if isinstance(node, dict):
        special = node.get("special_tokens")
        if isinstance(special, dict):
            for name, v in special.items():
                missing = [i for i in v.get("ids", []) if i not in mapping]
                if missing:
                    raise ValueError(f"post-processor special token {name!r} ids {missing} are not kept")
                v["ids"] = [mapping[i] for i in v.get("ids", [])]
        for v in node.values():
            _remap_specials(v, mapping)
    elif isinstance(node, list):
        for v in node:
            _remap_specials(v, mapping)


def reduce_tokenizer(tokenizer, kept: list[int], eos_token: str | None = None):
    """A fast tokenizer whose vocabulary is ``kept`` (old ids), renumbered 0.. in that order: BPE with no merges
    and whole-piece lookup (``ignore_merges``), so each kept piece is one token and any other text splits into
    kept characters; added tokens and post-processor ids remapped; unk dropped (BPE) or kept (WordLevel).
    ``eos_token``: the eos it declares (default: the source's). Returns (tokenizer, {old id: new id})."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if not tokenizer.is_fast:
        raise ValueError("vocabulary reduction needs a fast tokenizer (tokenizer.json)")
    mapping = {old: new for new, old in enumerate(kept)}
    tj = json.loads(tokenizer.backend_tokenizer.to_str())
    model = tj["model"]
    unk = tokenizer.unk_token
    if model["type"] == "BPE":
        model.update(merges=[], ignore_merges=True, byte_fallback=False, unk_token=None)
        unk = None
    elif model["type"] == "WordLevel":
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id not in mapping:
            kept = sorted(kept + [tokenizer.unk_token_id])  # WordLevel maps every unknown word to unk
            mapping = {old: new for new, old in enumerate(kept)}
    else:
        raise ValueError(f"tokenizer model {model['type']!r} is not supported for reduction (BPE, WordLevel)")
    model["vocab"] = {piece: mapping[i] for piece, i in model["vocab"].items() if i in mapping}
    added = [{**t, "id": mapping[t["id"]]} for t in tj.get("added_tokens", []) if t["id"] in mapping]
    # A multi-character piece ("user", "assistant") cannot be built from its characters without merges, and
    # model-specific tokenizer classes (transformers' Qwen2Tokenizer) rebuild the BPE without ``ignore_merges``:
    # such pieces are also declared added tokens (matched whole, before the BPE), which every class honours.
    have = {t["id"] for t in added}
    for old in kept:
        text = tokenizer.decode([old])
        if mapping[old] not in have and len(text) > 1:
            added.append({"id": mapping[old], "content": text, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": False})
    tj["added_tokens"] = sorted(added, key=lambda t: t["id"])
    _remap_specials(tj.get("post_processor"), mapping)
    backend = Tokenizer.from_str(json.dumps(tj))
    if backend.get_vocab_size() != len(kept):
        raise ValueError(f"reduced tokenizer has {backend.get_vocab_size()} ids, expected {len(kept)}: a kept id "
                         "is neither in the vocabulary nor an added token")
    names = {"bos_token": tokenizer.bos_token, "eos_token": eos_token or tokenizer.eos_token,
             "pad_token": tokenizer.pad_token, "unk_token": unk}
    names = {k: v for k, v in names.items() if v is not None}
    hf = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=tokenizer.model_max_length,
                                 clean_up_tokenization_spaces=False, **names)
    return hf, mapping


# -- weights --------------------------------------------------------------------------------------------------
def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights (other formats are not supported)")
    return files


def _slice_weights(src: Path, dst: Path, kept: list[int]) -> None:
    """Copy every safetensors shard, slicing the rows of the embedding and lm_head to ``kept``."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    rows = torch.tensor(kept, dtype=torch.long)
    sliced: list[str] = []
    total = 0
    weight_map: dict[str, str] = {}
    for f in _weight_files(src):
        out: dict[str, Any] = {}
        with safe_open(str(f), framework="pt") as sf:
            meta = sf.metadata()
            for name in sf.keys():
                t = sf.get_tensor(name)
                if name.endswith(EMBED_SUFFIXES + HEAD_SUFFIXES):
                    if t.ndim != 2 or t.shape[0] <= max(kept):
                        raise ValueError(f"{f.name}:{name} of shape {tuple(t.shape)} cannot keep row {max(kept)}")
                    t = t.index_select(0, rows).contiguous()
                    sliced.append(name)
                out[name] = t
                total += t.numel() * t.element_size()
                weight_map[name] = f.name
        save_file(out, str(dst / f.name), metadata=meta or {"format": "pt"})
    if not any(n.endswith(EMBED_SUFFIXES) for n in sliced):
        raise ValueError(f"{src}: no tensor named *{EMBED_SUFFIXES[0]}: cannot find the input embedding to reduce")
    index = src / "model.safetensors.index.json"
    if index.exists():
        atomic_write_text(dst / index.name, json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                       indent=1))


def _config_token_ids(folder: Path) -> dict[str, Any]:
    ids: dict[str, Any] = {}
    for name in ("config.json", "generation_config.json"):
        p = folder / name
        if p.exists():
            for k, v in json.loads(p.read_text()).items():
                if k.endswith("token_id") and v is not None:
                    ids[f"{name}:{k}"] = v
    return ids


def _map_token_ids(cfg: dict, mapping: dict[int, int]) -> dict:
    out = dict(cfg)
    for k, v in cfg.items():
        if k.endswith("token_id") and v is not None:
            out[k] = [mapping[x] for x in v if x in mapping] if isinstance(v, list) else mapping.get(v)
    return out


def reduce_model_folder(src: str | Path, dst: str | Path, profile: str) -> int:
    """Write the reduced copy of ``src`` for ``profile`` into ``dst``; returns the new vocabulary size."""
    from transformers import AutoTokenizer

    src, dst = Path(src), Path(dst)
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    kept = kept_token_ids(tokenizer, profile, _config_token_ids(src))
    lay = layout_of(FormatSpec(profile=profile))
    reduced, mapping = reduce_tokenizer(tokenizer, kept, eos_token=lay.eos)
    kept = sorted(mapping)
    dst.mkdir(parents=True, exist_ok=True)
    _slice_weights(src, dst, kept)
    reduced.save_pretrained(str(dst))
    eos = mapping[single_token(tokenizer, lay.eos, "eos")] if lay.eos else mapping[tokenizer.eos_token_id]
    cfg = _map_token_ids(json.loads((src / "config.json").read_text()), mapping)
    cfg["vocab_size"] = len(kept)
    cfg["eos_token_id"] = eos
    if cfg.get("pad_token_id") is None:
        cfg["pad_token_id"] = mapping.get(tokenizer.pad_token_id, eos) if tokenizer.pad_token_id is not None else eos
    atomic_write_text(dst / "config.json", json.dumps(cfg, indent=1))
    gen_src = src / "generation_config.json"
    gen = _map_token_ids(json.loads(gen_src.read_text()), mapping) if gen_src.exists() else {}
    gen.update(eos_token_id=eos, pad_token_id=cfg["pad_token_id"], bos_token_id=cfg.get("bos_token_id"))
    atomic_write_text(dst / "generation_config.json", json.dumps(gen, indent=1))
    atomic_write_text(dst / PROFILE_FILE, json.dumps({"profile": profile, "source": str(src), "kept_ids": kept,
                                                      "vocab_size": len(kept)}, indent=1))
    return len(kept)


# -- pre-quantized (bitsandbytes 4-bit) bases --------------------------------------------------------------------
def bnb_4bit(folder: str | Path) -> bool:
    """Whether ``folder``'s config.json says bitsandbytes 4-bit (the ARChitects' ``*-bnb-4bit`` checkpoints)."""
    q = json.loads((Path(folder) / "config.json").read_text()).get("quantization_config") or {}
    return q.get("quant_method") == "bitsandbytes" and bool(q.get("load_in_4bit"))


def quantization_plan(quantized: bool, dequantize: str, dequantized_fits: bool | None) -> dict[str, str]:
    """Per engine, how a base is loaded. Not quantized: 16-bit everywhere (the engines' own ``quantization``
    settings still apply). A bnb 4-bit base: the trainer loads it as it is (Unsloth/PEFT read the
    quantization_config); vLLM and the scorer load it 4-bit (vLLM ``quantization="bitsandbytes"``) unless it is
    dequantized once at preparation ('always', or 'auto' where the memory planner says the 16-bit copy fits:
    ``dequantized_fits``)."""
    if not quantized:
        return {"train": "as configured", "vllm": "as configured", "scorer": "as configured"}
    if dequantize == "always" or (dequantize == "auto" and dequantized_fits):
        return {"train": "bnb-4bit (as published)", "vllm": "dequantized 16-bit", "scorer": "dequantized 16-bit"}
    return {"train": "bnb-4bit (as published)", "vllm": "bnb-4bit", "scorer": "bnb-4bit"}


def vllm_quantization_kwargs(model_dir: str | Path) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments for a base folder: ``quantization="bitsandbytes"`` for a bnb 4-bit folder
    (vLLM reads the checkpoint's own quantization_config; LoRA on bnb is supported since vLLM 0.5.x), nothing
    otherwise. GPU only: vLLM's bitsandbytes path needs CUDA."""
    return {"quantization": "bitsandbytes"} if bnb_4bit(model_dir) else {}


def dequantize_folder(src: str | Path, dst: str | Path, dtype: str = "bfloat16") -> None:
    """Load a bnb 4-bit folder with transformers, dequantize every 4-bit layer to ``dtype`` and save it without
    a quantization_config: a plain 16-bit folder every engine loads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, dst = Path(src), Path(dst)
    if not bnb_4bit(src):
        raise ValueError(f"{src} is not a bitsandbytes 4-bit checkpoint (config.json quantization_config)")
    from safetensors.torch import save_model

    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=getattr(torch, dtype), device_map="cpu")
    model = model.dequantize().to(getattr(torch, dtype))
    # transformers 5's save_pretrained re-applies the loader's bnb conversion in reverse, which has none
    # (Bnb4bitDeserialize.reverse_op raises): the dequantized tensors are written with safetensors directly
    # (shared tied tensors once), and the config without its quantization_config.
    dst.mkdir(parents=True, exist_ok=True)
    save_model(model, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["torch_dtype"] = dtype
    atomic_write_text(dst / "config.json", json.dumps(cfg, indent=1, default=str))
    if model.generation_config is not None:
        atomic_write_text(dst / "generation_config.json", model.generation_config.to_json_string())
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(dst))
    if (src / PROFILE_FILE).exists():
        shutil.copy2(src / PROFILE_FILE, dst / PROFILE_FILE)


# -- the step -----------------------------------------------------------------------------------------------------
def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", PROFILE_FILE):
        p = folder / name
        h.update(name.encode() + (p.read_bytes() if p.exists() else b"-"))
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:12]


def _link_folder(src: Path, dst: Path) -> None:
    """A folder of symlinks to ``src``'s files (read-only inputs stay where they are), written as is."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != PROFILE_FILE:
            os.symlink(f.resolve(), dst / f.name)


def prepare_model(source: str | Path, cfg: FormatConfig, cache_dir: str | Path,
                  dequantized_fits: bool | None = None, dtype: str = "bfloat16") -> PreparedModel:
    """The folder the engines load for ``source`` under ``cfg`` (see the module doc), cached in ``cache_dir``.
    ``dequantized_fits``: the memory planner's answer for a bnb 4-bit base held in ``dtype`` (None: unknown,
    which keeps it 4-bit under 'auto')."""
    from transformers import AutoTokenizer

    t0 = time.time()
    source = Path(source).resolve()
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    found, found_from = profile_of_model(source, tokenizer)
    profile, profile_from = (found, found_from) if cfg.profile == "auto" else (cfg.profile, "config")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}")
    ArcFormat(tokenizer, FormatSpec(profile=profile))  # the profile's symbols must be tokens: fail before any work
    quantized = bnb_4bit(source)
    plan = quantization_plan(quantized, cfg.dequantize, dequantized_fits)
    dequantize = quantized and plan["vllm"].startswith("dequantized")
    reduce = cfg.reduce_vocab and len(tokenizer) > REDUCED_MAX
    if reduce and quantized and not dequantize:
        raise ValueError(f"{source} is bnb 4-bit with a full vocabulary: reducing it needs the dequantized copy "
                         "(format.dequantize='always'), or attach a reduced checkpoint")
    card = dict(source=str(source), profile=profile, profile_from=profile_from, source_vocab_size=len(tokenizer),
                quantization=plan)
    if not (reduce or dequantize or profile != found):
        return PreparedModel(path=str(source), vocab_size=len(tokenizer), reduced=False,
                             seconds=time.time() - t0, **card)
    key = {"source": str(source), "digest": _digest(source), "profile": profile, "reduce": reduce,
           "dequantize": dequantize, "dtype": dtype if dequantize else None}
    name = f"prepared-{profile}-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]}"
    folder = Path(cache_dir) / name
    marker = folder / "prepared.json"
    cached = marker.exists() and json.loads(marker.read_text()) == key
    if not cached:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder.parent))
        try:
            stage = source
            if dequantize:
                dequantize_folder(source, tmp / "dequantized", dtype)
                stage = tmp / "dequantized"
            if reduce:
                reduce_model_folder(stage, tmp / "out", profile)
            elif stage != source:
                os.replace(stage, tmp / "out")
            else:
                _link_folder(source, tmp / "out")
            pf = tmp / "out" / PROFILE_FILE
            recorded = json.loads(pf.read_text()) if pf.exists() else {"source": str(source)}
            if recorded.get("profile") != profile:  # the folder must say the profile this run speaks
                atomic_write_text(pf, json.dumps({**recorded, "profile": profile}, indent=1))
            atomic_write_text(tmp / "out" / "prepared.json", json.dumps(key, indent=1))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp / "out", folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    vocab = len(AutoTokenizer.from_pretrained(str(folder)))
    return PreparedModel(path=str(folder), vocab_size=vocab, reduced=reduce, seconds=time.time() - t0,
                         cached=cached, **card)
