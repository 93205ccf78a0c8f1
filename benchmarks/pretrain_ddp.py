"""Data-parallel pretraining on this machine: the same ``build_submission.py pretrain`` run in one plain process and
under ``torchrun`` with N Gloo processes, its speed and how closely the runs agree.

    .venv/bin/python benchmarks/pretrain_ddp.py                            # arc-tiny, 30k tokens, 1 and 2 processes
    .venv/bin/python benchmarks/pretrain_ddp.py --shape arc-nano --tokens 12000 --nproc 1 2 --fsdp

Rows: each run's steps, tokens, training seconds, tokens/s in total and per rank, final loss, and the largest
relative weight difference from the one-process run (per tensor, max |a - b| / max |a|). By default the machine's
cores are split evenly: the one-process run gets all of them as threads, each of N ranks 1/N (OMP_NUM_THREADS), so
on a CPU the table shows the cost of the exchange (no speedup is expected when the ranks share the same cores);
``--threads K`` gives every process K threads instead (on a busy machine, where one process's threads contend
with other jobs, 1 thread per process is the steadier comparison). On a multi-GPU node the same command line with
NCCL is where data parallelism pays. Last line: ``pretrain_ddp: ...``
(the largest world size's tokens/s over one process's, and the loss and weight agreement).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "arcttt_kaggle" / "sample_data" / "arc-agi_test_challenges.json"


def run(nproc: int, args: list[str], out: Path, threads: int, fsdp: bool) -> dict:
    launcher = ([sys.executable] if nproc == 1 and not fsdp else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"])
    cmd = [*launcher, str(ROOT / "build_submission.py"), *args, "--out", str(out), *(["--fsdp"] if fsdp else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"pretrain_ddp: {' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return json.loads((out / "pretrain.json").read_text())


def max_rel_diff(a: Path, b: Path) -> float:
    from safetensors.numpy import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max(float(np.abs(wa[k] - wb[k]).max() / max(np.abs(wa[k]).max(), 1e-12)) for k in wa)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="arc-tiny", help="model shape (arc-nano, arc-tiny, arc-small)")
    ap.add_argument("--tokens", type=int, default=30_000, help="token budget of every run (global tokens)")
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="world sizes to run (1: a plain process)")
    ap.add_argument("--fsdp", action="store_true", help="also run the largest world size with --fsdp (FSDP2)")
    ap.add_argument("--tokens-per-batch", type=int, default=4096)
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores shared by the ranks of a run")
    ap.add_argument("--threads", type=int, default=0, help="threads per process (0: --cores split over the ranks)")
    ap.add_argument("--out", help="keep the runs' folders here (default: a temporary folder)")
    a = ap.parse_args()

    args = ["pretrain", "--data", str(SAMPLE), "--shape", a.shape, "--tokens", str(a.tokens), "--max-seq-len",
            str(a.max_seq_len), "--tokens-per-batch", str(a.tokens_per_batch), "--examples-per-task", "8",
            "--checkpoint-minutes", "600"]
    sizes = sorted(set(a.nproc) | {1})
    plan = [(n, False) for n in sizes] + ([(max(sizes), True)] if a.fsdp and max(sizes) > 1 else [])
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(a.out) if a.out else Path(tmp)
        rows = []
        for n, fsdp in plan:
            out = base / f"world{n}{'-fsdp' if fsdp else ''}"
            rec = run(n, args, out, a.threads or max(1, a.cores // n), fsdp)
            rows.append((n, fsdp, out, rec))
        ref_out, ref = rows[0][2], rows[0][3]
        print(f"pretrain {a.shape}, {a.tokens:,} tokens, --tokens-per-batch {a.tokens_per_batch}, sample tasks; "
              + (f"{a.threads} thread(s) per process" if a.threads else f"{a.cores} cores split over the ranks")
              + " (Gloo on CPU)")
        print("| processes | steps | tokens | train s | tok/s total | tok/s per rank | final loss | "
              "max weight diff vs 1 |")
        print("|---|---|---|---|---|---|---|---|")
        for n, fsdp, out, rec in rows:
            kind = "1 (plain process)" if n == 1 else f"{n} (torchrun, {'FSDP2' if fsdp else 'DDP'})"
            d = rec["distributed"]
            diff = max_rel_diff(ref_out, out) if out != ref_out else 0.0
            print(f"| {kind} | {rec['steps']} | {rec['tokens_seen']:,} | {rec['train_seconds']:.1f} | "
                  f"{d['tokens_per_second']:,.0f} | {d['tokens_per_second_per_rank']:,.0f} | "
                  f"{rec['final_loss']:.6f} | {diff:.1e} |")
        n, fsdp, out, top = max(rows[1:] or rows, key=lambda r: (r[0], not r[1]))
        loss_rel = abs(top["final_loss"] - ref["final_loss"]) / ref["final_loss"]
        print(f"pretrain_ddp: {n} processes {top['tokens_per_second'] / ref['tokens_per_second']:.2f}x one process's "
              f"tokens/s ({top['tokens_per_second']:,.0f} vs {ref['tokens_per_second']:,.0f}); final loss agrees to "
              f"{loss_rel:.1e} relative, weights to {max_rel_diff(ref_out, out):.1e}; same tokens seen: "
              f"{top['tokens_seen'] == ref['tokens_seen']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
