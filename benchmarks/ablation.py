"""The ablation chain on held-out ARC-AGI-1 evaluation tasks: what each stage of the kit adds.

    .venv/bin/python benchmarks/ablation.py --model models/arc-starter                     # the reporting set
    .venv/bin/python benchmarks/ablation.py --model models/arc-starter --set validation    # choose settings here
    .venv/bin/python benchmarks/ablation.py --model models/arc-starter --tasks 00576224,0c786b71 --views 4

Rows (each includes the stages above it, as in the MIT TTT paper and the ARChitects' ablation):

1. ``base greedy``: the model as it is, identity view, one greedy decode per test input;
2. ``+ joint stage``: the model trained on every evaluated task's demonstrations together (``run.joint.train_joint``,
   the run's own joint stage: leave-one-out examples, a view per example, never a test output), greedy;
3. ``+ per-task TTT``: a LoRA adapter per task on its leave-one-out examples under augmentations, trained from the
   joint weights (``engines.train.Trainer``, the PEFT backend), identity view, greedy;
4. ``+ views, vote``: greedy decodes under ``--views`` augmented views, mapped back, flat vote, top two;
5. ``+ PoE``: the top voted grids re-scored under ``--poe-views`` augmented views (``selection.select``,
   ``engines.score_candidates.Scorer``), top two by summed log-likelihood + log(votes);
6. ``+ DFS``: every completion with probability >= ``--tau`` per view (``decode.method="dfs"``), added to the
   sampled candidates, then the same PoE selection.

Every row selects as the kit does, with ``SelectConfig.demote_inconsistent`` on. Variant rows beside the chain:
per-task TTT from the base weights (no joint stage; ``--no-joint-variant`` leaves it out), and the DFS row without
the consistency check.

Columns: test outputs solved (pass@2, Kaggle's metric counted per test output); partial credit: test outputs whose
attempt 1 has the right shape, and the cells right (per test output, the better attempt's share of cells equal to
the true output's, 0 for a wrong shape or no attempt, averaged over every test output); attempt-1 grids of a
single colour; mean NLL per token of the true test outputs (identity view; the model the row decodes with); and
the row's seconds, each stage measured (the joint stage, the adapters, each decode call, each selection): a row
counts the stages it runs. Below the table the same rows split by whether the task's rule is an exact instance of
a curriculum family (``pretrain.synthetic.curriculum_families``). The last line is
``ablation: base A/N, ttt B/N, full C/N; ttt nll ratio R``: ttt the better of the joint and per-task TTT rows, R
the NLL after all test-time training (joint + per-task) over the base model's.

Task sets (``arc.heldout.held_out_sets``): ``--set reporting`` (default, figures only) or ``--set validation``
(where every setting is chosen), disjoint by content from each other and from the dry run's sample; ``--tasks``
for any list. Settings (TTT steps, rate, rank, augmentations, examples; the joint stage's epochs and rate) are the
model folder's ``run_settings.json`` (what the dry run uses), the command line on top.

Held out, by content: the model folder's ``pretrain.json`` names its data files, exclusions and synthetic
curriculum; ``check_held_out`` rebuilds what it trained on (the real tasks, and every synthetic epoch) and stops
if an evaluated task shares an id or a pair, up to rotations, flips and colours, with it. Engines: vLLM for
decoding (``--backend hf`` for transformers), fp32 on CPU.
"""

from __future__ import annotations

import argparse
import functools
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


def fits(task: Task, fit: int = FIT_TOKENS) -> bool:
    """Every test prompt plus its true output within ``fit`` tokens of the kit layout."""
    from arcttt_kaggle.engines.format import FormatSpec, layout_of

    lay = layout_of(FormatSpec())
    return all(lay.token_count(task.train, p) <= fit for p in task.test)


def evaluation_files() -> tuple[Path, Path] | None:
    """ARC-AGI-1 evaluation's challenges and solutions under ``../shared/data``; None where it is absent."""
    data = shared_data_dir()
    if data is None:
        return None
    ev = data / "arc-agi-1"
    return ev / "arc-agi_evaluation_challenges.json", ev / "arc-agi_evaluation_solutions.json"


def task_sets(evaluation: dict[str, Task]):
    """The sample, validation (24) and reporting (60) sets (``arc.heldout.held_out_sets``)."""
    from arcttt_kaggle.arc.data import package_sample_dir
    from arcttt_kaggle.arc.heldout import held_out_sets

    d = package_sample_dir()
    sample = load_challenges(d / "arc-agi_test_challenges.json", solutions=d / "arc-agi_test_solutions.json").tasks
    return held_out_sets(evaluation, list(sample.values()), validation=24, reporting=60, fits=fits)


@functools.lru_cache(maxsize=4)
def trained_on(model: Path) -> tuple[list[Task], int, list[Task]]:
    """What the model folder's ``pretrain.json`` says it trained on: (real tasks, synthetic count, synthetic tasks),
    its ``init_record`` chain included (a model continued from another with ``--init``). The synthetic epochs are
    rebuilt from each record's seed, count and epochs, as the run drew them."""
    from arcttt_kaggle.engines.ttt_data import stable_seed
    from arcttt_kaggle.pretrain.corpus import Exclusion, apply_exclusion, load_task_files
    from arcttt_kaggle.pretrain.synthetic import synthetic_tasks

    repo = Path(__file__).resolve().parents[1]
    find = lambda f: next((p for p in (Path(f), repo / f) if p.exists()), None)  # noqa: E731
    trained: list[Task] = []
    synthetic: list[Task] = []
    read: dict[tuple, Exclusion] = {}  # (data files, exclusions) -> exclusion: links naming the same files read once
    rec = json.loads((model / "pretrain.json").read_text())
    while rec is not None:
        files, missing = [find(f) for f in rec["data"]["files"]], [f for f in rec["data"]["files"] if not find(f)]
        excluded = [find(f) for f in rec.get("exclude", [])]
        if missing or None in excluded:
            raise SystemExit(f"cannot check held-out: the model's training files {missing or rec['exclude']} are "
                             "not here")
        key = (tuple(files), tuple(excluded))
        if key not in read:
            read[key] = Exclusion.from_files(excluded)
            trained += apply_exclusion(load_task_files(files), read[key])[0]
        exclusion = read[key]
        corpus = rec["config"]["corpus"]
        if corpus.get("synthetic_tasks"):
            for epoch in range(int(rec.get("epoch", 0)) + 1):
                synthetic += synthetic_tasks(corpus["synthetic_tasks"],
                                             stable_seed(corpus["seed"] + epoch, "synthetic"), exclusion.pairs)
        rec = rec.get("init_record")
    trained = list({t.id: t for t in trained}.values())  # a chain may train on the same file twice
    return trained, len(synthetic), synthetic


def check_held_out(model: Path, tasks: list[Task]) -> str:
    """Stop when an evaluated task shares an id or an (input, output) pair, up to rotations, flips and a colour
    relabelling, with what the model trained on: its ``pretrain.json`` data files less its exclusions, and the
    synthetic tasks of every epoch it started (rebuilt)."""
    from arcttt_kaggle.arc.heldout import shared_content

    if not (model / "pretrain.json").exists():
        return f"{model} has no pretrain.json: its training data is unknown, held-out not checked"
    trained, n_syn, synthetic = trained_on(model)
    ids = {t.id for t in trained}
    overlap = sorted({t.id for t in tasks if t.id in ids} | set(shared_content(tasks, trained)))
    if overlap:
        raise SystemExit(f"not held out: {len(overlap)} task(s) share an id or a pair with the {len(trained)} "
                         f"tasks the model was trained on: {overlap[:10]}")
    syn = shared_content(tasks, synthetic)
    if syn:
        raise SystemExit(f"not held out: {len(syn)} task(s) share a pair with the model's synthetic curriculum: "
                         f"{syn[:10]}")
    return (f"held out by id and content (up to rotations, flips and colours) from the {len(trained)} tasks and "
            f"{n_syn} synthetic tasks the model was trained on")


def settings(model: Path, a: argparse.Namespace) -> dict:
    """The chain's settings: the model folder's ``run_settings.json`` (what the dry run uses with this model), the
    command line on top, the kit's CPU ablation defaults for what neither says."""
    from arcttt_kaggle.kaggle.dryrun import model_settings
    from arcttt_kaggle.run.joint import JointConfig

    ms = model_settings(model)
    j = JointConfig()
    keys = {"steps": ("train.steps", a.ttt_steps, 48), "lr": ("train.learning_rate", a.ttt_lr, 3e-3),
            "rank": ("train.lora_rank", a.rank, 16), "augmentations": ("ttt.augmentations_per_task", None, 8),
            "max_examples": ("ttt.max_examples_per_task", None, 64),
            "joint_epochs": ("joint.epochs", a.joint_epochs, j.epochs),
            "joint_lr": ("joint.learning_rate", a.joint_lr, j.learning_rate),
            "joint_examples": ("joint.examples_per_task", None, j.examples_per_task),
            "joint_batch": ("joint.tokens_per_batch", a.joint_batch, j.tokens_per_batch)}
    out = {name: cli if cli is not None else ms.get(key, default) for name, (key, cli, default) in keys.items()}
    out["source"] = "the model's run_settings.json" if ms else "the ablation's defaults"
    if any(cli is not None for _, cli, _ in keys.values()):
        out["source"] += ", the command line on top"
    return out



def train_joint_model(model: Path, tasks: dict[str, Task], st: dict, out: Path) -> tuple[Path, dict]:
    """The run's joint stage on ``tasks`` (their demonstrations only), to the end of its epochs: (folder, record)."""
    from dataclasses import replace as dc_replace

    from arcttt_kaggle.run.joint import JointConfig, train_joint

    cfg = dc_replace(JointConfig(enabled=True), epochs=st["joint_epochs"], learning_rate=st["joint_lr"],
                     examples_per_task=st["joint_examples"], tokens_per_batch=st["joint_batch"], max_seq_len=2048)
    rec = train_joint(list(tasks.values()), model, out, cfg, seconds=24 * 3600.0, device="cpu", progress=True)
    return out, rec


def train_adapters(model: Path, tasks: dict[str, Task], ttt: dict, out: Path, desc: str = "ttt") -> dict:
    """One LoRA adapter per task (PEFT backend, fp32) with the settings ``ttt`` (``settings``' keys):
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
    adapter from ``adapters`` (the scorer's model alone where it has none)."""
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

    @staticmethod
    def outputs(tasks: dict[str, Task]) -> list[tuple[str, int]]:
        return [(tid, i) for tid in sorted(tasks) for i in range(len(tasks[tid].test))]

    def first(self, key) -> np.ndarray | None:
        gs = self.attempts.get(key) or []
        return np.asarray(gs[0]) if gs else None

    def shape_right(self, tasks: dict[str, Task]) -> int:
        """Test outputs whose attempt 1 has the true output's shape."""
        return sum(self.first(k) is not None and self.first(k).shape == tasks[k[0]].test[k[1]].output.shape
                   for k in self.outputs(tasks))

    def single_colour(self, tasks: dict[str, Task]) -> int:
        """Test outputs whose attempt 1 is a grid of one colour."""
        return sum(self.first(k) is not None and len(np.unique(self.first(k))) == 1 for k in self.outputs(tasks))

    def cells_right(self, tasks: dict[str, Task]) -> float:
        """Mean over every test output of the better attempt's share of cells equal to the truth (0: a wrong shape
        or no attempt)."""
        def share(g, truth) -> float:
            g, truth = np.asarray(g), np.asarray(truth)
            return float((g == truth).mean()) if g.shape == truth.shape else 0.0
        per = [max((share(g, tasks[tid].test[i].output) for g in (self.attempts.get((tid, i)) or [])[:2]), default=0.0)
               for tid, i in self.outputs(tasks)]
        return float(np.mean(per)) if per else 0.0

    def solved_keys(self, tasks: dict[str, Task]) -> list[tuple[str, int]]:
        return [(tid, i) for tid, i in self.outputs(tasks)
                if any(g is not None and grid_key(g) == grid_key(tasks[tid].test[i].output)
                       for g in (self.attempts.get((tid, i)) or [])[:2])]

    def solved(self, tasks: dict[str, Task]) -> int:
        return len(self.solved_keys(tasks))


def top_two(selection) -> list:
    return [g for g in selection.attempts if g is not None]


def timed(fn, *args, **kwargs):
    t0 = time.time()
    out = fn(*args, **kwargs)
    return out, time.time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/arc-starter", help="the model folder (its pretrain.json is checked)")
    ap.add_argument("--set", choices=["reporting", "validation"], default="reporting",
                    help="the held-out task set (arc.heldout): reporting for figures, validation to choose settings")
    ap.add_argument("--tasks", help="comma-separated ARC-AGI-1 evaluation task ids instead of --set")
    ap.add_argument("--limit", type=int, default=0, help="only the first N tasks of the list")
    ap.add_argument("--ttt-steps", type=int, default=None, help="default: the model's run_settings.json, else 48")
    ap.add_argument("--ttt-lr", type=float, default=None, help="default: the model's run_settings.json, else 3e-3")
    ap.add_argument("--rank", type=int, default=None, help="default: the model's run_settings.json, else 16")
    ap.add_argument("--joint-epochs", type=int, default=None,
                    help="the joint stage's epochs (default: the model's run_settings.json, else JointConfig's)")
    ap.add_argument("--joint-lr", type=float, default=None,
                    help="the joint stage's peak learning rate (default: run_settings.json, else JointConfig's)")
    ap.add_argument("--joint-batch", type=int, default=None, help="the joint stage's padded tokens per batch, at "
                    "least 2048 (default: run_settings.json, else JointConfig's)")
    ap.add_argument("--no-joint-variant", action="store_true",
                    help="leave out the variant row 'per-task TTT without the joint stage' (saves a TTT pass)")
    ap.add_argument("--views", type=int, default=8, help="augmented views decoded per test input")
    ap.add_argument("--poe-views", type=int, default=8, help="views each PoE candidate is scored under")
    ap.add_argument("--tau", type=float, default=0.1, help="DFS probability threshold")
    ap.add_argument("--backend", choices=["vllm", "hf"], default="vllm", help="the decoding engine")
    ap.add_argument("--out", default="out/ablation", help="adapters, the joint model and ablation.json")
    a = ap.parse_args()

    from arcttt_kaggle.engines.decode import DecodeConfig, Decoder, plan_requests
    from arcttt_kaggle.engines.score_candidates import Scorer
    from arcttt_kaggle.pretrain.synthetic import curriculum_families
    from arcttt_kaggle.selection.select import SelectConfig, select_attempts

    files = evaluation_files()
    if files is None:
        print("ablation: skipped: ../shared/data is absent (ARC-AGI-1 evaluation is read from there)")
        return 0
    all_tasks = load_challenges(files[0], solutions=files[1]).tasks
    ids = a.tasks.split(",") if a.tasks else list(task_sets(all_tasks).named(a.set))
    ids = ids[: a.limit] if a.limit else ids
    unknown = [t for t in ids if t not in all_tasks]
    if unknown:
        raise SystemExit(f"not ARC-AGI-1 evaluation task ids: {unknown}")
    tasks = {t: all_tasks[t] for t in ids}
    model = Path(a.model).resolve()
    held = check_held_out(model, list(tasks.values()))
    st = settings(model, a)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    n_out = sum(len(t.test) for t in tasks.values())
    where = f"--tasks ({len(tasks)})" if a.tasks else f"the {a.set} set"
    print(f"ablation: {len(tasks)} tasks of {where}, {n_out} test outputs, model {model} ({held})", flush=True)
    print(f"settings: TTT {st['steps']} steps, lr {st['lr']}, rank {st['rank']}, {st['augmentations']} "
          f"augmentations, <= {st['max_examples']} examples; joint stage {st['joint_epochs']} epochs of "
          f"{st['joint_examples']} examples a task, lr {st['joint_lr']}, {st['joint_batch']} tokens a batch "
          f"({st['source']})", flush=True)

    # -- test-time training: the joint stage, then one adapter per task from its weights (and from the base) ------
    (joint, joint_rec), joint_s = timed(train_joint_model, model, tasks, st, out / "joint")
    print(f"joint stage: {joint_rec['mode']}, {joint_rec['steps']} steps, {joint_rec['tokens_seen']:,} tokens in "
          f"{joint_s:.0f} s, final loss {joint_rec['final_loss']:.4f}", flush=True)
    finite = lambda res: {tid: r.adapter_dir if r.finite else None for tid, r in res.items()}  # noqa: E731
    adapters, ttt_s = timed(lambda: finite(train_adapters(joint, tasks, st, out / "adapters")))
    print(f"per-task TTT: {len(tasks)} adapters in {ttt_s:.0f} s", flush=True)
    plain, plain_s = ({}, 0.0) if a.no_joint_variant else timed(
        lambda: finite(train_adapters(model, tasks, st, out / "adapters-no-joint", desc="ttt, no joint")))

    # -- decoding: each row's requests in their own timed call ------------------------------------------------
    rank = st["rank"]
    dcfg = DecodeConfig(backend=a.backend, dtype="float32", max_loras=4, max_lora_rank=max(8, rank),
                        max_cpu_loras=max(4, len(tasks)), max_model_len=2048, enforce_eager=True,
                        constrain_grid=True, views_per_test=a.views)
    greedy = lambda adapter_of: [q for t in tasks.values() for q in plan_requests(t, adapter_of(t.id), 1, seed=0)]  # noqa: E731
    view_req = [q for t in tasks.values() for q in plan_requests(t, adapters[t.id], a.views, seed=0)]
    secs: dict[str, float] = {}

    def decode(folder: Path, reqs: dict[str, list], cfg=dcfg) -> dict[str, list]:
        d = Decoder(folder, cfg)
        try:
            got = {}
            for name, rq in reqs.items():
                got[name], secs[name] = timed(d.generate, rq)
            return got
        finally:
            d.close()

    base_req, ttt_req = greedy(lambda _: None), greedy(lambda t: adapters[t])  # the joint row decodes base_req
    plain_req = greedy(lambda t: plain.get(t))
    got = decode(model, {"base": base_req})
    got.update(decode(joint, {"joint": base_req, "ttt": ttt_req, "views": view_req}))
    if plain:
        got.update(decode(model, {"plain": plain_req}))
    got.update(decode(joint, {"dfs": view_req}, replace(dcfg, method="dfs", dfs_threshold=a.tau, kv_block_size=32,
                                                         dfs_max_tokens=16 * a.views * 931)))

    def per_test(reqs, cands) -> dict:
        by: dict = {}
        for q, cs in zip(reqs, cands):
            by.setdefault((q.task.id, q.test_index), []).extend(cs)
        return by

    by = {k: per_test(r, got[k]) for k, r in (("base", base_req), ("joint", base_req), ("ttt", ttt_req),
                                               ("views", view_req), ("dfs", view_req))}
    if plain:
        by["plain"] = per_test(plain_req, got["plain"])
    keys = Row.outputs(tasks)
    flat, poe = SelectConfig(method="flat", use_program_expert=False), \
        SelectConfig(method="poe", poe_top_c=8, poe_views=a.poe_views, use_program_expert=False)
    rows = {n: Row(n) for n in ("base greedy", "+ joint stage", "+ per-task TTT", "+ views, vote", "+ PoE", "+ DFS")}
    variants = {}
    if plain:
        variants["variant: per-task TTT without the joint stage"] = Row("variant: per-task TTT without the joint stage")
    variants["variant: + DFS, PoE, no consistency check"] = Row("variant: + DFS, PoE, no consistency check")

    def select_into(row: Row, source: dict, cfg, score=None, extra: dict | None = None) -> float:
        t0 = time.time()
        for key in keys:
            cands = source.get(key, []) + ((extra or {}).get(key, []))
            row.attempts[key] = top_two(select_attempts(tasks[key[0]], key[1], cands, cfg, score))
        return time.time() - t0

    sel: dict[str, float] = {}
    with Scorer(model, dtype="float32", device="cpu") as scorer:
        nll = {"base": mean_nll(true_output_nll(scorer, tasks, {}))}
        if plain:
            nll["plain"] = mean_nll(true_output_nll(scorer, tasks, plain))
    with Scorer(joint, dtype="float32", device="cpu") as scorer:
        nll["joint"] = mean_nll(true_output_nll(scorer, tasks, {}))
        nll["ttt"] = mean_nll(true_output_nll(scorer, tasks, adapters))
        fn = scorer.score_fn(adapters)
        sel["base"] = select_into(rows["base greedy"], by["base"], flat)
        sel["joint"] = select_into(rows["+ joint stage"], by["joint"], flat)
        sel["ttt"] = select_into(rows["+ per-task TTT"], by["ttt"], flat)
        sel["vote"] = select_into(rows["+ views, vote"], by["views"], flat)
        sel["poe"] = select_into(rows["+ PoE"], by["views"], poe, fn)
        sel["dfs"] = select_into(rows["+ DFS"], by["views"], poe, fn, by["dfs"])
        nocheck = variants["variant: + DFS, PoE, no consistency check"]
        sel["nocheck"] = select_into(nocheck, by["views"], replace(poe, demote_inconsistent=False), fn, by["dfs"])
        if plain:
            sel["plain"] = select_into(variants["variant: per-task TTT without the joint stage"], by["plain"], flat)

    chain = joint_s + ttt_s + secs["views"]
    timing = {"base greedy": secs["base"] + sel["base"], "+ joint stage": joint_s + secs["joint"] + sel["joint"],
              "+ per-task TTT": joint_s + ttt_s + secs["ttt"] + sel["ttt"], "+ views, vote": chain + sel["vote"],
              "+ PoE": chain + sel["poe"], "+ DFS": chain + secs["dfs"] + sel["dfs"],
              "variant: + DFS, PoE, no consistency check": chain + secs["dfs"] + sel["nocheck"]}
    nlls = {"base greedy": nll["base"], "+ joint stage": nll["joint"]}
    if plain:
        timing["variant: per-task TTT without the joint stage"] = plain_s + secs["plain"] + sel["plain"]
        nlls["variant: per-task TTT without the joint stage"] = nll["plain"]
    all_rows = [*rows.values(), *variants.values()]
    for r in all_rows:
        r.seconds, r.nll = timing[r.name], nlls.get(r.name, nll["ttt"])

    print(f"\n| row | solved (pass@2, of {n_out}) | attempt 1 right shape | cells right | attempt 1 single-colour | "
          f"NLL/token of the true outputs | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in all_rows:
        print(f"| {r.name} | {r.solved(tasks)} | {r.shape_right(tasks)} | {r.cells_right(tasks):.3f} | "
              f"{r.single_colour(tasks)} | {r.nll:.4f} | {r.seconds:.0f} |")
    families = {tid: curriculum_families(t) for tid, t in tasks.items()}
    split = {"in the curriculum": {t: tasks[t] for t in tasks if families[t]},
             "not": {t: tasks[t] for t in tasks if not families[t]}}
    n_in, n_not = (sum(len(t.test) for t in g.values()) for g in split.values())
    print(f"\nby rule family: {len(split['in the curriculum'])} tasks ({n_in} outputs) whose rule is a curriculum "
          f"family ({', '.join(sorted(f'{t}: {f[0]}' for t, f in families.items() if f)) or 'none'}), "
          f"{len(split['not'])} ({n_not}) not")
    print("\n| row | in the curriculum: solved, cells right | not: solved, cells right |")
    print("|---|---|---|")
    for r in all_rows:
        parts = [f"{r.solved(g)}/{sum(len(t.test) for t in g.values())}, {r.cells_right(g):.3f}" if g else "-"
                 for g in split.values()]
        print(f"| {r.name} | {parts[0]} | {parts[1]} |")
    atomic_write_text(out / "ablation.json", json.dumps({
        "tasks": ids, "set": None if a.tasks else a.set, "held_out": held, "args": vars(a), "settings": st,
        "joint": {k: joint_rec[k] for k in ("mode", "steps", "tokens_seen", "train_seconds", "final_loss", "views")},
        "families": families,
        "rows": [{"name": r.name, "solved": r.solved(tasks), "shape_right": r.shape_right(tasks),
                  "cells_right": r.cells_right(tasks), "single_colour": r.single_colour(tasks), "nll": r.nll,
                  "seconds": r.seconds, "solved_outputs": [f"{t}:{i}" for t, i in r.solved_keys(tasks)]}
                 for r in all_rows],
        "attempts": {r.name: {f"{k[0]}:{k[1]}": [np.asarray(g).tolist() for g in gs] for k, gs in sorted(r.attempts.items())}
                     for r in all_rows}}, indent=1))
    ttt_best = max(rows["+ joint stage"].solved(tasks), rows["+ per-task TTT"].solved(tasks))
    print(f"ablation: base {rows['base greedy'].solved(tasks)}/{n_out}, ttt {ttt_best}/{n_out}, "
          f"full {rows['+ DFS'].solved(tasks)}/{n_out}; ttt nll ratio {nll['ttt'] / nll['base']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
