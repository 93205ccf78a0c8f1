"""The run's plan from its config, and the in-run re-plan from what the run has measured.

``budget`` holds the arithmetic (token work, the cost model, the degradation ladder); this module applies it
to a ``RunConfig``: ``task_works`` turns tasks and settings into token work, ``full_settings`` reads the top
rung from the config. ``replan`` is what a worker calls after its first trained tasks: it fits the throughputs
to its own events (``budget.measured_throughput``, the same fit a finished run's ``measured_throughput.json``
comes from), predicts what is left (the untrained tasks' TTT, then decoding, the second pass and scoring of
all its tasks) and walks the ladder again from the settings in force (a worker re-plans once its trainer has
started, from the start-up's measured slowness, and again after its first trained tasks), so priors that were too optimistic turn
into fewer steps or views before the deadline, not into a phase that never runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Mapping, Sequence

from .budget import KIT, CostModel, Settings, TaskWork, Throughput, make_plan, measured_throughput, task_work, view_tokens
from arcttt_kaggle.arc.data import Task
from arcttt_kaggle.engines.format import FormatSpec, Layout, layout_of
from arcttt_kaggle.engines.ttt_data import TTTDataConfig, build_ttt_examples


@dataclass(frozen=True)
class TokenModel:
    """How the plan turns a task into tokens besides the settings: the prompt layout of the run's format profile
    (its preprompt, markers and chat tokens cost tokens the kit's layout does not), and the decode method (DFS
    generates a multiple of one greedy decode, up to its per-task cap)."""

    layout: Layout = KIT
    dfs: bool = False
    dfs_max_tokens: int = 0

    @classmethod
    def of(cls, cfg, profile: str = "kit") -> "TokenModel":
        """The token model of ``cfg`` (a ``RunConfig``) speaking ``profile`` (the prepared model's, resolved)."""
        return cls(layout_of(FormatSpec(profile=profile)), cfg.decode.method == "dfs", cfg.decode.dfs_max_tokens)


def example_tokens(task: Task, ttt: TTTDataConfig, layout: Layout = KIT) -> float:
    """Mean tokens of one TTT example of ``task`` in ``layout`` (0 when none fits), trimmed to
    ``ttt.max_tokens`` with the layout's own count, as the trainer trims with its format's."""
    examples = build_ttt_examples(task, ttt, count_tokens=layout.token_count)
    return (sum(layout.token_count(e.demos, e.query) for e in examples) / len(examples)) if examples else 0.0


def task_works(tasks: Mapping[str, Task], ttt: TTTDataConfig, batch: int, s: Settings,
               untrained: Sequence[str] | None = None, cache: dict[str, float] | None = None,
               tokens: TokenModel = TokenModel()) -> list[TaskWork]:
    """Token work per task under settings ``s``, from the layout's token arithmetic (no tokenizer needed).

    ``untrained``: only these tasks still have TTT to do (a re-plan after the first tasks); None = all.
    ``cache``: task id -> mean example tokens, filled on first use (the ladder asks for every rung).
    """
    works = []
    cache = {} if cache is None else cache
    for task in tasks.values():
        trains = s.train_steps > 0 and (untrained is None or task.id in untrained)
        if trains and task.id not in cache:
            cache[task.id] = example_tokens(task, ttt, tokens.layout)
        ex_tokens = cache[task.id] if trains else 0.0
        prompts, outputs = view_tokens(task, tokens.layout)
        settings = s if trains else replace(s, train_steps=0)
        works.append(task_work(task, settings, example_tokens=ex_tokens, batch=batch, prompt_tokens_per_view=prompts,
                               output_tokens_per_view=outputs, dfs=tokens.dfs, dfs_max_tokens=tokens.dfs_max_tokens))
    return works


def full_settings(cfg) -> Settings:
    """The top rung of the ladder: what the config asks for when time is plentiful."""
    return Settings(train_steps=cfg.train.steps if cfg.run_ttt else 0, views_per_test=cfg.decode.views_per_test,
                    score_views=cfg.select.poe_views if cfg.select.method == "poe" else 0,
                    score_top_c=cfg.select.poe_top_c, extra_view_ratio=cfg.second_pass_ratio)


@dataclass(frozen=True)
class Replan:
    """The outcome of a re-plan: the settings for what is left and the phase deadlines that share the time."""

    settings: Settings
    train_deadline: float
    decode_deadline: float
    predicted: dict  # seconds per phase still to come
    available_s: float
    fits: bool
    throughput: Throughput  # the fitted rates the prediction used

    def to_event(self, before: Settings) -> dict:
        return {"before": before.to_dict(), "after": self.settings.to_dict(),
                "predicted_s": {k: round(v, 2) for k, v in self.predicted.items()},
                "available_s": round(self.available_s, 2), "fits": self.fits,
                "throughput": {k: round(v, 4) for k, v in asdict(self.throughput).items()}}


def _scale_unmeasured(fitted: Throughput, prior: Throughput, events: list[dict]) -> Throughput:
    """Rates the run has not measured yet (decoding, scoring before the decoder started) scaled by how far the
    measured training was from its prior: a machine 3x slower than its priors at training is assumed 3x slower at
    the rest until the rest is measured (clamped to [0.1, 10]). The first trained task is left out once there is
    a second: it pays the trainer's one-time warm-up (the soak saw a tiny model's first task 4x its second drop
    TTT for 238 tasks of a run that then ended with more than half its time left)."""
    if any(e["phase"] == "decode" and e["status"] == "ok" for e in events):
        return fitted
    train = [e for e in events if e["phase"] == "train" and e["status"] == "ok" and e.get("steps")]
    train = train[1:] if len(train) >= 2 else train
    startup = [e for e in events if e["phase"] == "startup_train" and e["status"] == "ok"]
    if train:
        predicted = sum(float(e.get("tokens") or 0) / prior.train_tokens_per_s + e["steps"] * prior.train_step_s
                        + prior.per_task_overhead_s for e in train)
        slow = min(10.0, max(0.1, sum(e["end"] - e["start"] for e in train) / max(predicted, 1e-6)))
    elif startup and prior.train_startup_s > 0:
        # Before any task: the trainer's start-up is the only measurement; it only ever slows the forecast
        # (a warm import cache makes a start-up faster without making the engines faster).
        slow = min(10.0, max(1.0, (startup[-1]["end"] - startup[-1]["start"]) / prior.train_startup_s))
    else:
        return fitted
    return replace(fitted, decode_prompt_tokens_per_s=prior.decode_prompt_tokens_per_s / slow,
                   decode_output_tokens_per_s=prior.decode_output_tokens_per_s / slow,
                   score_tokens_per_s=prior.score_tokens_per_s / slow, decode_startup_s=prior.decode_startup_s * slow,
                   score_startup_s=prior.score_startup_s * slow, decode_call_overhead_s=prior.decode_call_overhead_s * slow)


def replan(events: list[dict], prior: Throughput, tasks: Mapping[str, Task], untrained: Sequence[str], ttt: TTTDataConfig,
           batch: int, current: Settings, now: float, deadline: float, max_train_share: float,
           tokens: TokenModel = TokenModel()) -> Replan:
    """Re-plan a worker's remaining work from its own events (start-ups already paid are not predicted again).

    The ladder starts at ``current`` (a re-plan never raises the effort the first plan chose). The time left is
    split between the phases in proportion to their predicted seconds, as the parent splits it at launch.
    """
    fitted = _scale_unmeasured(measured_throughput(events, prior), prior, events)
    started = {e["phase"] for e in events if e.get("status") == "ok"}
    # Start-up costs still ahead: the decoder (and scorer) start after training; training has already started.
    model = CostModel(replace(fitted, train_startup_s=0.0,
                              decode_startup_s=0.0 if "startup_decode" in started else fitted.decode_startup_s))
    available = max(0.0, deadline - now)
    cache: dict[str, float] = {}
    plan = make_plan(lambda s: task_works(tasks, ttt, batch, s, untrained, cache, tokens), current, model, 1, available,
                     scores=current.score_views > 0)
    secs = plan.workers[0].seconds if plan.workers else {"startup": 0.0, "train": 0.0, "decode": 0.0, "score": 0.0}
    total = max(1e-6, sum(secs.values()))
    train_share = min(max_train_share, secs["train"] / total) if plan.settings.train_steps else 0.0
    decode_share = train_share + (secs["startup"] + secs["decode"]) / total
    decode_share = min(1.0 - 0.5 * secs["score"] / total, max(decode_share, train_share))
    return Replan(plan.settings, now + available * train_share, now + available * decode_share, dict(secs), available,
                  plan.fits, fitted)


def adapter_quotas(max_adapters: int, task_counts: Sequence[int]) -> list[int]:
    """Each worker's share of the run's ``max_adapters`` (the disk's limit on adapters alive at once: a worker
    keeps its adapters until it has decoded and scored): proportional to its tasks, largest remainders first,
    never more than its tasks, summing to at most ``max_adapters``. 0 = no limit: every worker gets 0."""
    if max_adapters <= 0:
        return [0] * len(task_counts)
    total = sum(task_counts)
    if max_adapters >= total:
        return list(task_counts)
    exact = [max_adapters * n / total for n in task_counts]
    quotas = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: (quotas[i] - exact[i], i))[: max_adapters - sum(quotas)]:
        quotas[i] += 1
    return quotas
