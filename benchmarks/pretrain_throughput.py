"""Pretraining speed: the kit's step (``pretrain.loop.Pretrainer.step``) beside a plain PyTorch loop on the same
batches and the same fresh model, and what length bucketing saves against batches drawn at random.

    .venv/bin/python benchmarks/pretrain_throughput.py                      # arc-tiny, 12 batches
    .venv/bin/python benchmarks/pretrain_throughput.py --shape arc-small --batches 6

Rows: tokens/s of each loop over real tokens (padding excluded), and the padded share of each batching. The
plain loop is the textbook one (forward with labels, backward, clip, AdamW step, zero grads); the kit's adds the
schedule, the non-finite check and its bookkeeping. Last line: ``kit/plain pretrain: X`` (the kit's tokens/s
over the plain loop's, same batches in the same order; the first batch of each is a warm-up and not timed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arcttt_kaggle.arc.data import load_challenges, package_sample_dir  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="arc-tiny")
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--tokens-per-batch", type=int, default=8192)
    ap.add_argument("--max-seq-len", type=int, default=2048)
    a = ap.parse_args()

    import torch

    from arcttt_kaggle.arc.data import shared_data_dir
    from arcttt_kaggle.pretrain.corpus import CorpusConfig, bucket_batches, epoch_sequences
    from arcttt_kaggle.pretrain.loop import PretrainConfig, Pretrainer
    from arcttt_kaggle.pretrain.shapes import build_arc_model

    data = shared_data_dir()
    if data is not None:
        src = data / "arc-agi-1" / "arc-agi_training_challenges.json"
        tasks = list(load_challenges(src, solutions=src.with_name("arc-agi_training_solutions.json")).tasks.values())
    else:
        src = package_sample_dir() / "arc-agi_test_challenges.json"
        tasks = list(load_challenges(src).tasks.values())
    cfg = PretrainConfig(shape=a.shape, tokens=10**9, max_seq_len=a.max_seq_len,
                         corpus=CorpusConfig(tokens_per_batch=a.tokens_per_batch))
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_arc_model(Path(tmp) / "m", a.shape)
        kit = Pretrainer(folder, cfg, device="cpu")
        seqs = epoch_sequences(tasks, kit.fmt, a.max_seq_len, 0, cfg.corpus)
        bucketed = bucket_batches(seqs, a.tokens_per_batch, kit.pad_id, seed=0)[: a.batches + 1]
        # random batching: same sequence count per batch as the bucketed average, rows drawn in random order
        rng = np.random.default_rng(0)
        order = rng.permutation(len(seqs))
        rows = max(1, round(np.mean([b.input_ids.shape[0] for b in bucketed])))
        pad_random = 1 - sum(len(seqs[i][0]) for i in order[: rows * 64]) / sum(
            max(len(seqs[i][0]) for i in order[k:k + rows]) * rows for k in range(0, rows * 64, rows))
        pad_bucket = 1 - sum(b.tokens for b in bucketed) / sum(b.input_ids.size for b in bucketed)

        def timed(step) -> float:
            step(bucketed[0])  # warm-up
            t0, toks = time.perf_counter(), 0
            for b in bucketed[1:]:
                step(b)
                toks += b.tokens
            return toks / (time.perf_counter() - t0)

        kit_tps = timed(lambda b: kit.step(b, cfg.lr))
        del kit
        torch.manual_seed(0)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)

        def plain(b):
            loss = model(input_ids=torch.from_numpy(b.input_ids), attention_mask=torch.from_numpy(b.attention_mask),
                         labels=torch.from_numpy(b.labels)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)

        plain_tps = timed(plain)
    params = sum(p.numel() for p in model.parameters())
    print(f"{a.shape}: {params / 1e6:.2f}M params, {a.batches} timed batches of <= {a.tokens_per_batch} tokens, "
          f"{len(seqs)} sequences in the epoch, torch threads {torch.get_num_threads()}")
    print("| loop | tokens/s | padded share of a batch |")
    print("|---|---|---|")
    print(f"| kit (Pretrainer.step, length buckets) | {kit_tps:,.0f} | {pad_bucket:.3f} |")
    print(f"| plain PyTorch loop, same batches | {plain_tps:,.0f} | {pad_bucket:.3f} |")
    print(f"| random batches (padding only, not timed) | | {pad_random:.3f} |")
    print(f"bucketing keeps {1 - pad_bucket:.3f} of each batch real vs {1 - pad_random:.3f} random: "
          f"{(1 - pad_bucket) / (1 - pad_random):.2f}x the real tokens per padded token")
    print(f"kit/plain pretrain: {kit_tps / plain_tps:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
