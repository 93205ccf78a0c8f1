"""The budget: a deadline object with an injectable clock, the cost model, LPT balancing and the ladder."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arcttt_kaggle.run.planning import adapter_quotas
from arcttt_kaggle.run.budget import (Budget, BudgetConfig, CostModel, Settings, TaskWork, Throughput, balance, ladder,
                                  make_plan)


class FakeClock:
    """A clock the test moves by hand (a fault-free stand-in for time.time)."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_deadline_is_start_plus_limit_minus_margin():
    clock = FakeClock()
    b = Budget(BudgetConfig(limit_seconds=3600, safety_margin_seconds=600), clock=clock)
    assert b.deadline == 1000 + 3600 - 600
    clock.t += 2000
    assert b.elapsed() == 2000 and b.remaining() == 1000 and not b.expired()
    clock.t += 1000
    assert b.expired() and b.remaining() == 0


def test_defaults_are_kaggle_12h_with_20min_margin():
    c = BudgetConfig()
    assert c.limit_seconds == 12 * 3600 and c.safety_margin_seconds == 20 * 60


@pytest.mark.parametrize("kw, match", [({"limit_seconds": 0}, "limit_seconds"),
                                       ({"limit_seconds": 100, "safety_margin_seconds": 100}, "leaves nothing"),
                                       ({"max_train_share": 0}, "max_train_share")])
def test_budget_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        BudgetConfig(**kw)


def test_balance_is_longest_first_to_least_loaded():
    costs = {"a": 10, "b": 9, "c": 5, "d": 4, "e": 1}
    groups = balance(costs, 2)
    loads = [sum(costs[t] for t in g) for g in groups]
    assert sorted(sum(groups, [])) == sorted(costs)
    assert max(loads) == 15  # LPT: [a, d, e] = 15 and [b, c] = 14
    assert groups[0][0] == "a" and groups[1][0] == "b"


def test_ladder_order_fewer_steps_then_no_ttt_then_fewer_views():
    rungs = ladder(Settings(train_steps=8, views_per_test=4, score_views=2, score_top_c=4))
    names = [r.rung for r in rungs]
    assert names == ["full", "steps=4", "steps=2", "steps=1", "no-ttt", "no-ttt,views=2", "no-ttt,views=1"]
    assert all(r.train_steps == 0 for r in rungs[4:])


def test_plan_takes_the_first_rung_that_fits_and_calibration_moves_predictions():
    model = CostModel(Throughput(train_tokens_per_s=100, decode_prompt_tokens_per_s=1000, decode_output_tokens_per_s=100,
                                 score_tokens_per_s=1000, train_startup_s=0, decode_startup_s=0, score_startup_s=0, decode_call_overhead_s=0, train_step_s=0,
                                 per_task_overhead_s=0))

    def works(s: Settings):
        return [TaskWork(f"t{i}", s.train_steps * 100, s.train_steps, 1000 * s.views_per_test, 100 * s.views_per_test, 0) for i in range(4)]

    full = Settings(train_steps=8, views_per_test=4, score_views=0, score_top_c=1)
    roomy = make_plan(works, full, model, workers=2, available_seconds=1000)
    assert roomy.fits and roomy.settings.rung == "full"
    assert roomy.makespan == pytest.approx(2 * (8 + 4 + 4))  # 2 tasks per worker: train 8 s + decode 4+4 s each
    tight = make_plan(works, full, model, workers=2, available_seconds=17)  # steps=1 needs 18 s, no TTT 16 s
    assert tight.fits and tight.settings.rung == "no-ttt"
    hopeless = make_plan(works, full, model, workers=2, available_seconds=1)
    assert not hopeless.fits and hopeless.settings.rung == "no-ttt,views=1"
    model.calibrate("train", tokens=1000, seconds=5)  # measured 200 tok/s, twice the prior
    assert model.task_seconds(works(full)[0])["train"] == pytest.approx(4.0)


def test_throughput_file_rejects_unknown_keys(tmp_path):
    p = tmp_path / "t.json"
    p.write_text('{"train_tokens_per_s": 5, "bogus": 1}')
    with pytest.raises(ValueError, match="bogus"):
        Throughput.from_file(p)
    p.write_text('{"train_tokens_per_s": 5}')
    assert Throughput.from_file(p).train_tokens_per_s == 5


def test_measured_throughput_fits_step_cost_and_decode_rate():
    from arcttt_kaggle.run.budget import measured_throughput

    prior = Throughput(train_tokens_per_s=1e9, per_task_overhead_s=1.0, decode_call_overhead_s=2.0,
                       decode_prompt_tokens_per_s=1000.0)
    events = [
        {"worker": 0, "phase": "startup_train", "status": "ok", "start": 0, "end": 7},
        # 1 s overhead + steps x 0.5 s + tokens / 100
        {"worker": 0, "phase": "train", "status": "ok", "start": 10, "end": 22, "steps": 20, "tokens": 100},
        {"worker": 0, "phase": "train", "status": "ok", "start": 30, "end": 38, "steps": 10, "tokens": 200},
        {"worker": 0, "phase": "train", "status": "ok", "start": 40, "end": 49, "steps": 12, "tokens": 200},
        # cumulative counters: 2 s per call + prompt / 1000 + generated / 100
        {"worker": 0, "phase": "decode", "status": "ok", "start": 50, "end": 63, "tokens_generated": 1000,
         "prompt_tokens": 1000, "bound_tokens": 2000},
        {"worker": 0, "phase": "decode", "status": "ok", "start": 70, "end": 79, "tokens_generated": 1500,
         "prompt_tokens": 3000, "bound_tokens": 3000},
        {"worker": 0, "phase": "score", "status": "ok", "start": 80, "end": 82, "planned_prompt_tokens": 300,
         "planned_output_tokens": 600},
        {"worker": 0, "phase": "score", "status": "ok", "start": 82, "end": 83, "planned_prompt_tokens": 150,
         "planned_output_tokens": 300},
    ]
    t = measured_throughput(events, prior)
    assert t.train_tokens_per_s == pytest.approx(100.0)
    assert t.train_step_s == pytest.approx(0.5)
    assert t.per_task_overhead_s == pytest.approx(1.0, abs=1e-9)
    assert t.decode_output_tokens_per_s == pytest.approx(100.0)
    assert t.decode_output_fill == pytest.approx(0.5)  # 1500 generated of a 3000-token bound
    assert t.score_tokens_per_s == pytest.approx(300.0)  # (prompt + fill x candidates) / s
    assert t.train_startup_s == 7 and t.decode_startup_s == prior.decode_startup_s


def test_the_throughput_file_holds_what_was_measured_and_names_the_rest_as_priors(tmp_path):
    import json

    from arcttt_kaggle.run.budget import measured_throughput, throughput_document

    events = [{"worker": 0, "phase": "startup_train", "status": "ok", "start": 0, "end": 7},
              {"worker": 0, "phase": "train", "status": "ok", "start": 10, "end": 22, "steps": 20, "tokens": 100},
              {"worker": 0, "phase": "train", "status": "ok", "start": 30, "end": 38, "steps": 10, "tokens": 200}]
    prior = Throughput(decode_call_overhead_s=2.0)
    doc = throughput_document(events, prior)
    assert set(doc) - {"priors"} == {"train_tokens_per_s", "train_step_s", "train_startup_s"}
    assert doc["priors"]["decode_call_overhead_s"] == 2.0 and "decode_output_tokens_per_s" in doc["priors"]
    (tmp_path / "m.json").write_text(json.dumps(doc))
    assert Throughput.from_file(tmp_path / "m.json") == measured_throughput(events, prior)  # read back whole


def test_measured_throughput_with_equal_steps_splits_the_intercept_keeping_the_prior_overhead():
    from arcttt_kaggle.run.budget import measured_throughput

    prior = Throughput(per_task_overhead_s=0.1)
    # 24 steps each: 0.1 s overhead + 24 x 0.01 s + tokens / 20000
    rows = [(2000, 0.1 + 0.24 + 2000 / 20000), (8000, 0.1 + 0.24 + 8000 / 20000), (12000, 0.1 + 0.24 + 12000 / 20000)]
    events = [{"worker": 0, "phase": "train", "status": "ok", "start": 0, "end": sec, "steps": 24, "tokens": tok}
              for tok, sec in rows]
    t = measured_throughput(events, prior)
    assert t.train_tokens_per_s == pytest.approx(20000.0)
    assert t.train_step_s == pytest.approx(0.01) and t.per_task_overhead_s == pytest.approx(0.1)


def test_a_plan_from_the_fitted_throughput_reproduces_the_measured_phases(sample_tasks):
    """Self-consistency: what ``measured_throughput`` fits, ``CostModel`` turns back into the measured seconds."""
    from arcttt_kaggle.run.budget import measured_throughput, task_work

    truth = Throughput(train_tokens_per_s=5000, train_step_s=0.02, per_task_overhead_s=0.3,
                       decode_output_tokens_per_s=800, decode_output_fill=0.6, score_tokens_per_s=4000,
                       decode_call_overhead_s=1.0)
    model = CostModel(truth)
    s = Settings(train_steps=16, views_per_test=4, score_views=2, score_top_c=3)
    works = [task_work(t, s, example_tokens=300 + 10 * i, batch=1, prompt_tokens_per_view=[500 + i],
                       output_tokens_per_view=[100]) for i, t in enumerate(sample_tasks.values())]
    events, clock = [], 0.0
    for w in works:
        secs = model.task_seconds(w)
        events.append({"worker": 0, "phase": "train", "status": "ok", "start": clock, "end": clock + secs["train"],
                       "steps": w.train_steps, "tokens": w.train_tokens})
        clock += secs["train"]
    prompt = sum(w.prompt_tokens for w in works)
    bound = sum(w.output_tokens for w in works)
    dec = sum(model.task_seconds(w)["decode"] for w in works) + truth.decode_call_overhead_s
    events.append({"worker": 0, "phase": "decode", "status": "ok", "start": clock, "end": clock + dec,
                   "tokens_generated": int(bound * 0.6), "prompt_tokens": prompt, "bound_tokens": bound})
    for w in works:
        events.append({"worker": 0, "phase": "score", "status": "ok", "start": 0, "end": model.task_seconds(w)["score"],
                       "planned_prompt_tokens": w.score_tokens, "planned_output_tokens": w.score_output_tokens})
    fitted = CostModel(measured_throughput(events, Throughput(per_task_overhead_s=0.3, decode_call_overhead_s=1.0)))
    for phase in ("train", "decode", "score"):
        assert sum(fitted.task_seconds(w)[phase] for w in works) == pytest.approx(
            sum(model.task_seconds(w)[phase] for w in works), rel=1e-3), phase


def test_measured_throughput_ignores_one_task_slowed_by_the_machine():
    from arcttt_kaggle.run.budget import measured_throughput

    rows = [(tok, 0.34 + tok / 20000) for tok in (2000, 4000, 6000, 8000, 10000, 12000)]
    rows[2] = (6000, 22.7)  # something else took the cores for 20 s
    events = [{"worker": 0, "phase": "train", "status": "ok", "start": 0, "end": sec, "steps": 24, "tokens": tok}
              for tok, sec in rows]
    t = measured_throughput(events, Throughput(per_task_overhead_s=0.1))
    assert t.train_tokens_per_s == pytest.approx(20000.0, rel=1e-6)


def test_dfs_is_priced_at_its_multiple_within_its_cap_and_a_dfs_pass_measures_the_multiple(sample_tasks):
    """DFS generates a multiple of one greedy decode per view (``dfs_decode_multiple``), never more than its
    per-task cap; a DFS call's generated / bound tokens refit the multiple, not the sampling fill."""
    from arcttt_kaggle.run.budget import measured_throughput, task_work

    task = next(iter(sample_tasks.values()))
    s = Settings(train_steps=0, views_per_test=8, score_views=0, score_top_c=0)
    t = Throughput(decode_output_fill=0.5, dfs_decode_multiple=3.0, decode_prompt_tokens_per_s=1e12)
    greedy = task_work(task, s, example_tokens=0, batch=1, prompt_tokens_per_view=[100], output_tokens_per_view=[200])
    dfs = task_work(task, s, example_tokens=0, batch=1, prompt_tokens_per_view=[100], output_tokens_per_view=[200],
                    dfs=True)
    capped = task_work(task, s, example_tokens=0, batch=1, prompt_tokens_per_view=[100], output_tokens_per_view=[200],
                       dfs=True, dfs_max_tokens=1000)
    m = CostModel(t)
    assert m.generated(greedy) == 8 * 200 * 0.5 and m.generated(dfs) == 8 * 200 * 3.0 and m.generated(capped) == 1000
    assert m.task_seconds(dfs)["decode"] == pytest.approx(6 * m.task_seconds(greedy)["decode"])
    ev = [{"worker": 0, "phase": "decode", "status": "ok", "start": 0.0, "end": 30.0, "method": "dfs",
           "tokens_generated": 5000, "prompt_tokens": 100, "bound_tokens": 2000}]
    fitted = measured_throughput(ev, t)
    assert fitted.dfs_decode_multiple == pytest.approx(2.5) and fitted.decode_output_fill == 0.5
    ev[0]["method"] = "sample"
    fitted = measured_throughput(ev, t)  # a sampling call's ratio is the fill, clamped to 1
    assert fitted.decode_output_fill == 1.0 and fitted.dfs_decode_multiple == 3.0


def test_plans_count_tokens_in_the_profiles_layout_and_price_dfs(sample_tasks):
    """The same tasks cost more tokens in the architects layout (48-symbol preprompt, 5-token reply marker) than
    in the kit's, and the count is the layout's exact arithmetic; a DFS config prices decoding at its multiple."""
    from dataclasses import replace

    from arcttt_kaggle.run.budget import prompt_tokens, view_tokens
    from arcttt_kaggle.run.config import preset
    from arcttt_kaggle.engines.format import FormatSpec, layout_of
    from arcttt_kaggle.run.planning import TokenModel, full_settings, task_works

    cfg = preset("cpu-tiny")
    kit, arch = TokenModel.of(cfg, "kit"), TokenModel.of(cfg, "architects")
    s = full_settings(cfg)
    tasks = dict(list(sample_tasks.items())[:4])
    w_kit, w_arch = (task_works(tasks, cfg.ttt, 1, s, tokens=tm) for tm in (kit, arch))
    for t, a, b in zip(tasks.values(), w_kit, w_arch):
        demos = len(t.train)
        assert prompt_tokens(t, 0, arch.layout) - prompt_tokens(t, 0) == 48 + 4 * (demos + 1)
        assert b.prompt_tokens > a.prompt_tokens and b.train_tokens >= a.train_tokens
    nv = layout_of(FormatSpec(profile="nvarc"))
    t = next(iter(tasks.values()))
    (p_kit,), (o_kit,) = view_tokens(t)
    (p_nv,), (o_nv,) = view_tokens(t, nv)
    assert o_nv == o_kit - 1  # joined rows: no separator after the last row
    dfs_cfg = replace(cfg, decode=replace(cfg.decode, method="dfs", temperature=0.0, samples_per_view=1))
    dfs = task_works(tasks, cfg.ttt, 1, s, tokens=TokenModel.of(dfs_cfg, "kit"))
    model = CostModel(replace(cfg.throughput, decode_output_fill=1.0, dfs_decode_multiple=2.0))
    assert all(d.dfs and model.generated(d) == 2 * model.generated(k) for d, k in zip(dfs, w_kit))


@given(st.integers(0, 500), st.lists(st.integers(0, 200), min_size=1, max_size=8))
def test_adapter_quotas_split_the_disks_limit_over_workers_by_their_tasks(max_adapters, counts):
    quotas = adapter_quotas(max_adapters, counts)
    if max_adapters == 0:
        assert quotas == [0] * len(counts)  # no limit
        return
    assert sum(quotas) == min(max_adapters, sum(counts))  # the whole limit is used, never more
    assert all(0 <= q <= n for q, n in zip(quotas, counts))
    share = max_adapters / max(1, sum(counts))
    assert all(abs(q - min(n, share * n)) < 1 for q, n in zip(quotas, counts))  # proportional to the tasks
