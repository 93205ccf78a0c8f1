"""The seed's ablation chain on held-out ARC-AGI-1 evaluation tasks: what each stage of the kit adds.

    .venv/bin/python benchmarks/ablation.py --model models/arc-starter            # the 60 default tasks
    .venv/bin/python benchmarks/ablation.py --model models/arc-starter --tasks 00576224,0c786b71 --views 4

Rows (each includes the stages above it, as in the MIT TTT paper and the ARChitects' ablation):

1. ``base greedy``: the model as it is, identity view, one greedy decode per test input;
2. ``+ TTT greedy``: a LoRA adapter trained per task on its leave-one-out examples under augmentations
   (``engines.train.Trainer``, the PEFT backend: the kit's one loop), identity view, greedy;
3. ``+ views, vote``: greedy decodes under ``--views`` augmented views, mapped back, flat vote, top two;
4. ``+ PoE``: the top voted grids re-scored under ``--poe-views`` augmented views (``selection.select``,
   ``engines.score_candidates.Scorer``), top two by summed log-likelihood + log(votes);
5. ``+ DFS``: every completion with probability >= ``--tau`` per view (``decode.method="dfs"``), added to the
   sampled candidates, then the same PoE selection.

Every row selects as the kit does, with ``SelectConfig.demote_inconsistent`` on (``selection.consistency``: grids
the demonstrations rule out go after the others). After the chain, variant rows measured beside it, not part of
it: row 5 without the consistency check; and (``--contrast L``, 0 leaves it out) row 5 with each view's
log-likelihood minus L x the base model's (no adapter) under the same view: a small model puts much of its
probability on background-only grids with or without the adapter, and the difference keeps what the task's
adapter added (contrastive scoring).

Columns: test outputs solved (pass@2, Kaggle's metric counted per test output); partial credit, which moves
before a model solves anything: test outputs whose attempt 1 has the right shape, and the cells right (per test
output, the better attempt's share of cells equal to the true output's, 0 for a wrong shape, averaged); mean NLL
per token of the true test outputs (identity view; the base model on row 1, the task's adapter from row 2 on), and seconds (every stage
the row runs: TTT training counts in each TTT row). The last line is
``ablation: base A/N, ttt B/N, full C/N; ttt nll ratio R`` with R = NLL with TTT / NLL without.

TTT settings (steps, learning rate, LoRA rank, augmentations, examples per task) are the model folder's
``run_settings.json`` (the ones the dry run uses with that model), with ``--ttt-steps``/``--ttt-lr``/``--rank``
on top; a folder without one gets 48 steps, lr 3e-3, rank 16, 8 augmentations, 64 examples. The line
``ttt settings:`` says which ran.

Held out, by content: the tasks must not be in the model's training data. The model folder's ``pretrain.json``
names its data files; every evaluated task is checked against them by id and by (input, output) pair (the ARC
sets share tasks with their pairs reordered), and the run stops if one overlaps.

The default list (``DEFAULT_TASKS``): the first 60 ARC-AGI-1 evaluation tasks, by id, whose every test input's
prompt plus its true output fits 1,024 tokens in the kit layout (``default_tasks`` recomputes it; a test checks
that they agree). Engines: vLLM for decoding (``--backend hf`` for transformers), fp32 on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arcttt_kaggle.arc.candidates import atomic_write_text  # noqa: E402
from arcttt_kaggle.arc.data import Task, grid_key, load_challenges, shared_data_dir  # noqa: E402

FIT_TOKENS = 1024
DEFAULT_TASKS = (
    "00576224 03560426 0692e18c 0bb8deee 0becf7df 0c786b71 0c9aba6e 11e1fe23 12422b43 12997ef3 12eac192 137f0df0 "
    "15696249 17cae0c1 195ba7dc 19bb5feb 1a2e2828 1c0d0a4b 2072aba6 22a4bbc2 27a77e38 27f8ce4f 281123b4 292dd178 "
    "2a5f8217 310f3251 31adaf00 31d5ba1a 32e9702f 332efdb3 34b99a2b 351d6448 3979b1a8 3b4c2228 3d31c5b3 45737921 "
    "48131b3c 4852f2fa 48f8583b 4cd1b7b2 4e469f39 505fff84 506d28a5 50aad11f 5207a7b5 5289ad53 575b1a71 5783df64 "
    "58743b76 59341089 5d2a5c43 5ffb2104 60c09cac 626c0bcc 62ab2642 62b74c02 64a7c07e 66e6c45b 66f2d22f 67636eac"
).split()


def default_tasks(challenges: Path, solutions: Path, count: int = 60, fit: int = FIT_TOKENS) -> list[str]:
    """The first ``count`` tasks by id whose every test prompt + true output fits ``fit`` kit-layout tokens."""
    from arcttt_kaggle.engines.format import FormatSpec, layout_of

    lay = layout_of(FormatSpec())
    tasks = load_challenges(challenges, solutions=solutions).tasks
    out = []
    for tid in sorted(tasks):
        t = tasks[tid]
        if all(lay.token_count(t.train, p) <= fit for p in t.test):
            out.append(tid)
        if len(out) == count:
            break
    return out


def evaluation_files() -> tuple[Path, Path] | None:
    """ARC-AGI-1 evaluation's challenges and solutions under ``../shared/data``; None where it is absent."""
    data = shared_data_dir()
    if data is None:
        return None
    ev = data / "arc-agi-1"
    return ev / "arc-agi_evaluation_challenges.json", ev / "arc-agi_evaluation_solutions.json"


def check_held_out(model: Path, tasks: list[Task]) -> str:
    """Stop when an evaluated task shares an id or an (input, output) pair with what the model was trained on:
    the tasks of its ``pretrain.json`` data files less those its ``exclude`` files removed."""
    from arcttt_kaggle.pretrain.corpus import Exclusion, apply_exclusion, load_task_files

    rec_path = model / "pretrain.json"
    if not rec_path.exists():
        return f"{model} has no pretrain.json: its training data is unknown, held-out not checked"
    rec = json.loads(rec_path.read_text())
    repo = Path(__file__).resolve().parents[1]
    find = lambda f: next((p for p in (Path(f), repo / f) if p.exists()), None)  # noqa: E731
    files, missing = [find(f) for f in rec["data"]["files"]], [f for f in rec["data"]["files"] if not find(f)]
    excluded = [find(f) for f in rec.get("exclude", [])]
    if missing or None in excluded:
        raise SystemExit(f"cannot check held-out: the model's training files {missing or rec['exclude']} are not here")
    trained, _ = apply_exclusion(load_task_files([f for f in files if f]), Exclusion.from_files(excluded))
    seen = Exclusion.from_tasks(trained)
    overlap = [t.id for t in tasks if seen.reason(t)]
    if overlap:
        raise SystemExit(f"not held out: {len(overlap)} task(s) share an id or a pair with the {len(trained)} "
                         f"tasks the model was trained on: {overlap[:10]}")
    return f"held out by id and content from the {len(trained)} tasks the model was trained on"


def ttt_settings(model: Path, a: argparse.Namespace) -> dict:
    """The TTT settings of the chain: the model folder's ``run_settings.json`` (what the dry run uses with this
    model), the command line on top, the kit's CPU ablation defaults for what neither says."""
    from arcttt_kaggle.kaggle.dryrun import model_settings

    ms = model_settings(model)
    keys = {"steps": ("train.steps", a.ttt_steps, 48), "lr": ("train.learning_rate", a.ttt_lr, 3e-3),
            "rank": ("train.lora_rank", a.rank, 16), "augmentations": ("ttt.augmentations_per_task", None, 8),
            "max_examples": ("ttt.max_examples_per_task", None, 64)}
    out = {name: cli if cli is not None else ms.get(key, default) for name, (key, cli, default) in keys.items()}
    out["source"] = "the model's run_settings.json" if ms else "the ablation's defaults"
    if any(cli is not None for _, cli, _ in keys.values()):
        out["source"] += ", the command line on top"
    return out


def train_adapters(model: Path, tasks: dict[str, Task], ttt: dict, out: Path, desc: str = "ttt") -> dict:
    """One LoRA adapter per task (PEFT backend, fp32) with the settings ``ttt`` (``ttt_settings``' keys):
    {task id: TrainResult}; ``result.adapter_dir`` is None where training was not finite."""
    from tqdm import tqdm

    from arcttt_kaggle.engines.train import TrainConfig, Trainer
    from arcttt_kaggle.engines.ttt_data import TTTDataConfig, build_ttt_examples

    rank = ttt["rank"]
    cfg = TrainConfig(backend="peft", load_in_4bit=False, dtype="float32", lora_rank=rank, lora_alpha=2 * rank,
                      steps=ttt["steps"], learning_rate=ttt["lr"], warmup_steps=4, gradient_checkpointing=False,
                      max_seq_len=2048)
    data = TTTDataConfig(augmentations_per_task=ttt["augmentations"], max_examples_per_task=ttt["max_examples"],
                         max_tokens=2048)
    results = {}
    with Trainer(model, cfg) as trainer:
        for tid, task in tqdm(tasks.items(), desc=desc, leave=False):
            results[tid] = trainer.train_task(tid, build_ttt_examples(task, data, trainer.fmt.token_count), out / tid)
    return results


def true_output_nll(scorer, tasks: dict[str, Task], adapters: dict) -> dict[str, tuple[float, int]]:
    """{task id: (summed NLL, tokens)} of the task's true test outputs under the identity view, with the task's
    adapter from ``adapters`` (the base model where it has none)."""
    from arcttt_kaggle.arc.augment import Augmentation

    ident, res = Augmentation(), {}
    for tid, t in tasks.items():
        nll = sum(-float(scorer.score(t, i, [p.output], [ident], adapters.get(tid))[0, 0]) for i, p in enumerate(t.test))
        res[tid] = (nll, sum(len(scorer.fmt.completion_ids(p.output)) for p in t.test))
    return res


def mean_nll(per_task: dict[str, tuple[float, int]]) -> float:
    """Token-weighted mean of ``true_output_nll``'s result."""
    return sum(v[0] for v in per_task.values()) / sum(v[1] for v in per_task.values())


@dataclass
class Row:
    name: str
    attempts: dict = field(default_factory=dict)  # (task id, test index) -> list of grids (at most 2)
    seconds: float = 0.0
    nll: float = float("nan")

    def shape_right(self, tasks: dict[str, Task]) -> int:
        """Test outputs whose attempt 1 has the true output's shape."""
        return sum(bool(gs) and np.shape(gs[0]) == np.shape(tasks[tid].test[i].output)
                   for (tid, i), gs in self.attempts.items())

    def cells_right(self, tasks: dict[str, Task]) -> float:
        """Mean over test outputs of the better attempt's share of cells equal to the truth (0: wrong shape)."""
        def share(g, truth) -> float:
            g, truth = np.asarray(g), np.asarray(truth)
            return float((g == truth).mean()) if g.shape == truth.shape else 0.0
        per = [max((share(g, tasks[tid].test[i].output) for g in gs[:2]), default=0.0)
               for (tid, i), gs in self.attempts.items()]
        return float(np.mean(per)) if per else 0.0

    def solved(self, tasks: dict[str, Task]) -> int:
        return sum(any(g is not None and grid_key(g) == grid_key(tasks[tid].test[i].output) for g in gs[:2])
                   for (tid, i), gs in self.attempts.items())


def top_two(selection) -> list:
    return [g for g in selection.attempts if g is not None]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/arc-starter")
    ap.add_argument("--tasks", help="comma-separated ARC-AGI-1 evaluation task ids (default: DEFAULT_TASKS)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N tasks of the list")
    ap.add_argument("--ttt-steps", type=int, default=None, help="default: the model's run_settings.json, else 48")
    ap.add_argument("--ttt-lr", type=float, default=None, help="default: the model's run_settings.json, else 3e-3")
    ap.add_argument("--rank", type=int, default=None, help="default: the model's run_settings.json, else 16")
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--poe-views", type=int, default=8)
    ap.add_argument("--tau", type=float, default=0.1)
    ap.add_argument("--contrast", type=float, default=0.5,
                    help="a variant row after the chain: the full chain's PoE with each view's log-likelihood "
                         "minus CONTRAST x the base model's (no adapter); 0 leaves the row out")
    ap.add_argument("--backend", choices=["vllm", "hf"], default="vllm")
    ap.add_argument("--out", default="out/ablation")
    a = ap.parse_args()

    from arcttt_kaggle.engines.decode import DecodeConfig, Decoder, plan_requests
    from arcttt_kaggle.engines.score_candidates import Scorer
    from arcttt_kaggle.selection.select import SelectConfig, select_attempts

    files = evaluation_files()
    if files is None:
        print("ablation: skipped: ../shared/data is absent (ARC-AGI-1 evaluation is read from there)")
        return 0
    all_tasks = load_challenges(files[0], solutions=files[1]).tasks
    ids = a.tasks.split(",") if a.tasks else list(DEFAULT_TASKS)
    ids = ids[: a.limit] if a.limit else ids
    unknown = [t for t in ids if t not in all_tasks]
    if unknown:
        raise SystemExit(f"not ARC-AGI-1 evaluation task ids: {unknown}")
    tasks = {t: all_tasks[t] for t in ids}
    model = Path(a.model).resolve()
    held = check_held_out(model, list(tasks.values()))
    ttt = ttt_settings(model, a)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    n_out = sum(len(t.test) for t in tasks.values())
    print(f"ablation: {len(tasks)} tasks, {n_out} test outputs, model {model} ({held})", flush=True)
    print(f"ttt settings: {ttt['steps']} steps, lr {ttt['lr']}, rank {ttt['rank']}, {ttt['augmentations']} "
          f"augmentations, <= {ttt['max_examples']} examples ({ttt['source']})", flush=True)

    # -- TTT: one adapter per task ----------------------------------------------------------------------------
    rank = ttt["rank"]
    t0 = time.time()
    adapters = {tid: r.adapter_dir if r.finite else None
                for tid, r in train_adapters(model, tasks, ttt, out / "adapters").items()}
    ttt_s = time.time() - t0
    print(f"ttt: {len(tasks)} adapters in {ttt_s:.0f} s", flush=True)

    # -- decoding: greedy views with and without adapters, then DFS -------------------------------------------
    dcfg = DecodeConfig(backend=a.backend, dtype="float32", max_loras=4, max_lora_rank=max(8, rank),
                        max_cpu_loras=max(4, len(tasks)), max_model_len=2048, enforce_eager=True,
                        constrain_grid=True, views_per_test=a.views)
    base_req = [q for t in tasks.values() for q in plan_requests(t, None, 1, seed=0)]
    view_req = [q for t in tasks.values() for q in plan_requests(t, adapters[t.id], a.views, seed=0)]
    d = Decoder(model, dcfg)
    try:
        t0 = time.time()
        base_c = d.generate(base_req)
        base_s = time.time() - t0
        t0 = time.time()
        view_c = d.generate(view_req)
        view_s = time.time() - t0
    finally:
        d.close()
    d = Decoder(model, replace(dcfg, method="dfs", dfs_threshold=a.tau, kv_block_size=32,
                               dfs_max_tokens=16 * a.views * 931))
    try:
        t0 = time.time()
        dfs_c = d.generate(view_req)
        dfs_s = time.time() - t0
    finally:
        d.close()

    # -- rows -------------------------------------------------------------------------------------------------
    per_test = lambda reqs, cands: {  # noqa: E731
        key: [c for q, cs in zip(reqs, cands) if (q.task.id, q.test_index) == key for c in cs]
        for key in {(q.task.id, q.test_index) for q in reqs}}
    base_by, view_by, dfs_by = per_test(base_req, base_c), per_test(view_req, view_c), per_test(view_req, dfs_c)
    identity = {k: [c for c in cs if c.view == view_by[k][0].view] for k, cs in view_by.items()} if view_by else {}
    flat, poe = SelectConfig(method="flat", use_program_expert=False), \
        SelectConfig(method="poe", poe_top_c=8, poe_views=a.poe_views, use_program_expert=False)
    rows = [Row("base greedy"), Row("+ TTT greedy"), Row("+ views, vote"), Row("+ PoE"), Row("+ DFS")]
    with Scorer(model, dtype="float32", device="cpu") as scorer:
        nll = {"base": mean_nll(true_output_nll(scorer, tasks, {})),
               "ttt": mean_nll(true_output_nll(scorer, tasks, adapters))}
        fn = scorer.score_fn(adapters)
        t0 = time.time()
        for key in sorted(view_by):
            task = tasks[key[0]]
            rows[0].attempts[key] = top_two(select_attempts(task, key[1], base_by.get(key, []), flat))
            rows[1].attempts[key] = top_two(select_attempts(task, key[1], identity.get(key, []), flat))
            rows[2].attempts[key] = top_two(select_attempts(task, key[1], view_by[key], flat))
        t_vote = time.time() - t0
        t0 = time.time()
        for key in sorted(view_by):
            rows[3].attempts[key] = top_two(select_attempts(tasks[key[0]], key[1], view_by[key], poe, fn))
        poe_s = time.time() - t0
        t0 = time.time()
        for key in sorted(view_by):
            cands = view_by[key] + dfs_by.get(key, [])
            rows[4].attempts[key] = top_two(select_attempts(tasks[key[0]], key[1], cands, poe, fn))
        dfs_poe_s = time.time() - t0
        variants = [("variant: + DFS, PoE, no consistency check", replace(poe, demote_inconsistent=False), fn)]
        if a.contrast > 0:  # what the adapter adds over the base model, which likes background-only grids too
            base_fn = scorer.score_fn({})
            contrast_fn = lambda t, i, g, v: fn(t, i, g, v) - a.contrast * base_fn(t, i, g, v)  # noqa: E731
            variants.append((f"variant: + DFS, PoE minus {a.contrast:g} x base", poe, contrast_fn))
        for name, cfg, score in variants:
            row = Row(name)
            t0 = time.time()
            for key in sorted(view_by):
                cands = view_by[key] + dfs_by.get(key, [])
                row.attempts[key] = top_two(select_attempts(tasks[key[0]], key[1], cands, cfg, score))
            row.seconds, row.nll = ttt_s + view_s + dfs_s + time.time() - t0, nll["ttt"]
            rows.append(row)
    share = 1 / max(1, a.views)  # the identity view's share of the views pass
    rows[0].seconds, rows[0].nll = base_s, nll["base"]
    rows[1].seconds, rows[1].nll = ttt_s + view_s * share, nll["ttt"]
    rows[2].seconds, rows[2].nll = ttt_s + view_s + t_vote, nll["ttt"]
    rows[3].seconds, rows[3].nll = ttt_s + view_s + poe_s, nll["ttt"]
    rows[4].seconds, rows[4].nll = ttt_s + view_s + dfs_s + dfs_poe_s, nll["ttt"]

    print(f"\n| row | solved (pass@2, of {n_out}) | attempt 1 right shape | cells right | "
          f"NLL/token of the true outputs | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.name} | {r.solved(tasks)} | {r.shape_right(tasks)} | {r.cells_right(tasks):.3f} | {r.nll:.4f} "
              f"| {r.seconds:.0f} |")
    solved = {r.name: sorted(f"{k[0]}:{k[1]}" for k in r.attempts if Row(r.name, {k: r.attempts[k]}).solved(tasks))
              for r in rows}
    atomic_write_text(out / "ablation.json", json.dumps({"tasks": ids, "held_out": held, "args": vars(a), "ttt": ttt,
                                                   "rows": [{"name": r.name, "solved": r.solved(tasks),
                                                             "shape_right": r.shape_right(tasks),
                                                             "cells_right": r.cells_right(tasks),
                                                             "nll": r.nll, "seconds": r.seconds} for r in rows],
                                                   "solved_outputs": solved,
                                                   "attempts": {r.name: {f"{k[0]}:{k[1]}": [np.asarray(g).tolist() for g in gs]
                                                                         for k, gs in sorted(r.attempts.items())}
                                                                for r in rows}}, indent=1))
    ratio = nll["ttt"] / nll["base"]
    print(f"ablation: base {rows[0].solved(tasks)}/{n_out}, ttt {rows[1].solved(tasks)}/{n_out}, "
          f"full {rows[4].solved(tasks)}/{n_out}; ttt nll ratio {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
