"""Specification of the transformers DFS prefill (issue 19): the prompt's forward hands the LM head its last
position only, and the root distribution equals the last row of a full forward. On the tiny model under a PEFT
adapter (the module the DFS runs), fp32. ``slow``: loads transformers + PEFT."""

from __future__ import annotations

import pytest

from arcttt_kaggle.engines.decode_dfs_hf import _KvStepper


@pytest.mark.slow
def test_prefill_computes_only_the_last_positions_logits_and_they_equal_the_full_forwards(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from arcttt_kaggle.engines.tinymodel import build_tiny_model, random_adapter

    model_dir = build_tiny_model(tmp_path / "tiny")
    adapter = random_adapter(model_dir, tmp_path / "adapter", seed=1)
    module = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                                       str(adapter)).eval()
    prompt = [1] + [4 + (i * 7) % 13 for i in range(60)]
    rows: list = []
    hook = module.get_base_model().lm_head.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[-2]))
    with torch.inference_mode():
        stepper = _KvStepper(module, torch, torch.device("cpu"), prompt, k=5)
        assert rows == [1]  # one position reached the head, not len(prompt)
        hook.remove()
        full = module(input_ids=torch.tensor([prompt])).logits[0, -1].float()
        assert full.shape == stepper.root_logits.shape
        assert float((stepper.root_logits - full).abs().max()) <= 1e-5
        # a step after the prefill continues from its cache: the same as a full forward over prompt + token
        got = stepper((7,), None)
        want = torch.log_softmax(module(input_ids=torch.tensor([prompt + [7]])).logits[0, -1].float(), -1)
        assert got and all(abs(v - float(want[t])) <= 1e-5 for t, v in got.items())
