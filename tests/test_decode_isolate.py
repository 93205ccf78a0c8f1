"""Decoding robustness without an engine: adapter folder checks (``engine_base.check_adapter``), failure
isolation (``decode_isolate.run_isolated``) driven by a fault-injecting stand-in engine call, the engine
arguments for quantization (pure functions), and the import direction of the engine modules.

The real-engine counterparts (a corrupt adapter among good ones, an injected engine error bisected out, in vLLM
and in the hf backend) are in ``test_decode.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_decode import corrupt_copy

from arcttt_kaggle.engines.decode import DecodeConfig
from arcttt_kaggle.engines.tinymodel import ensure_tiny_model, random_adapter


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    return random_adapter(ensure_tiny_model(root / "tiny"), root / "good", seed=1)


def test_check_adapter_accepts_a_peft_adapter_and_names_what_is_wrong_with_a_broken_one(tiny_adapter, tmp_path):
    import json
    import shutil

    from arcttt_kaggle.engines.engine_base import AdapterError, check_adapter

    check_adapter(tiny_adapter)  # a real PEFT adapter passes
    cases = {"truncate": "truncated or overwritten", "garbage": "header length"}
    for how, reason in cases.items():
        with pytest.raises(AdapterError, match=reason) as e:
            check_adapter(corrupt_copy(tiny_adapter, tmp_path / how, how))
        assert e.value.adapter == tmp_path / how
    with pytest.raises(AdapterError, match="folder missing"):
        check_adapter(tmp_path / "nowhere")
    shutil.copytree(tiny_adapter, tmp_path / "badcfg")
    (tmp_path / "badcfg" / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="adapter_config.json unreadable"):
        check_adapter(tmp_path / "badcfg")
    (tmp_path / "badcfg" / "adapter_config.json").write_text(json.dumps({"r": 0, "target_modules": ["q_proj"]}))
    with pytest.raises(AdapterError, match="rank"):
        check_adapter(tmp_path / "badcfg")
    shutil.copytree(tiny_adapter, tmp_path / "noweights")
    (tmp_path / "noweights" / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="no adapter_model"):
        check_adapter(tmp_path / "noweights")


def _jobs(n: int, adapters: dict[int, Path] | None = None):
    from arcttt_kaggle.engines.engine_base import Job

    adapters = adapters or {}
    return [Job(i, [i], 4, adapters.get(i), 0, (1, 1)) for i in range(n)]


class FaultyEngine:
    """Fault injection for ``run_isolated``: a stand-in engine call that raises whenever the batch holds a
    poisoned (job index, adapter) pair, else answers each job with one sample holding its index."""

    def __init__(self, poisoned: set, fatal: bool = False):
        from arcttt_kaggle.engines.engine_base import Sample

        self.poisoned, self.calls, self.Sample, self.is_fatal = poisoned, [], Sample, fatal

    def __call__(self, batch):
        self.calls.append([(j.index, j.adapter) for j in batch])
        if any((j.index, j.adapter) in self.poisoned for j in batch):
            raise RuntimeError("injected fault")
        return [[self.Sample([j.index], -1.0, "stop")] for j in batch]


def test_bisection_isolates_one_failing_base_request_and_keeps_every_other_result():
    from arcttt_kaggle.engines.decode_isolate import run_isolated

    jobs = _jobs(16)
    engine = FaultyEngine({(11, None)})
    iso = run_isolated(engine, jobs, deadline=None, retry_calls=24, fatal=lambda e: False)
    assert {i: r[0].token_ids for i, r in iso.results.items() if r} == {i: [i] for i in range(16) if i != 11}
    assert iso.dropped == {11: "RuntimeError: injected fault"} and iso.results[11] is None and not iso.rerouted
    assert iso.failed_calls == 5  # the full call, then the halves holding job 11: 8, 4, 2, 1
    assert len(engine.calls) == 1 + 2 * 4  # each failing call's two halves are retried
    ok_calls = [c for c in engine.calls if (11, None) not in c]
    assert sorted(i for c in ok_calls for i, _ in c) == [i for i in range(16) if i != 11]  # each ran once, fine


def test_a_failing_adapter_is_found_and_its_requests_decoded_with_the_base_model(tmp_path):
    from arcttt_kaggle.engines.decode_isolate import failure_records, run_isolated

    bad = tmp_path / "bad"
    jobs = _jobs(8, {2: bad, 5: bad, 6: tmp_path / "good"})
    engine = FaultyEngine({(2, bad), (5, bad)})  # the adapter fails wherever it runs; the base model does not
    iso = run_isolated(engine, jobs, deadline=None, retry_calls=24, fatal=lambda e: False)
    assert all(iso.results[i] is not None for i in range(8)) and not iso.dropped
    assert set(iso.rerouted) == {2, 5} and all(a == str(bad.resolve()) for a, _ in iso.rerouted.values())
    assert all((i, bad) not in engine.calls[-1] for i in (2, 5))
    recs = failure_records(iso, jobs, lambda i: (f"task{i % 2}", 0))
    assert [(r.task, r.adapter, r.action, r.requests) for r in recs] == [("task0", str(bad.resolve()), "base", 1),
                                                                        ("task1", str(bad.resolve()), "base", 1)]
    assert all("injected fault" in r.reason for r in recs)


def test_an_error_naming_an_adapter_reroutes_it_without_bisecting(tmp_path):
    from arcttt_kaggle.engines.decode_isolate import run_isolated
    from arcttt_kaggle.engines.engine_base import AdapterError

    bad = tmp_path / "bad"
    jobs = _jobs(8, {3: bad, 4: tmp_path / "good"})
    calls = []

    def run(batch):
        calls.append(batch)
        if any(j.adapter == bad for j in batch):
            raise AdapterError(bad, "weights unreadable")
        return [[] for _ in batch]

    iso = run_isolated(run, jobs, deadline=None, retry_calls=24, fatal=lambda e: False)
    assert len(calls) == 2 and len(calls[1]) == 8 and set(iso.rerouted) == {3} and not iso.dropped


def test_retries_are_bounded_by_the_budget_the_deadline_and_a_fatal_error():
    from arcttt_kaggle.engines.decode_isolate import run_isolated

    poisoned = {(i, None) for i in range(0, 64, 2)}  # every other request fails: bisection cannot finish cheaply
    engine = FaultyEngine(poisoned)
    iso = run_isolated(engine, _jobs(64), deadline=None, retry_calls=10, fatal=lambda e: False)
    assert len(engine.calls) == 11 and len(iso.results) == 64
    assert sum("retry budget spent (10 calls" in why for why in iso.dropped.values()) >= 32
    engine = FaultyEngine({(3, None)})  # the deadline (1.0) passes during the first call (the clock reads 5.0)
    iso = run_isolated(engine, _jobs(8), deadline=1.0, retry_calls=10, fatal=lambda e: False, clock=lambda: 5.0)
    assert len(engine.calls) == 1 and set(iso.dropped) == set(range(8))
    assert all("deadline passed before its retry" in why for why in iso.dropped.values())
    engine = FaultyEngine({(3, None)})
    iso = run_isolated(engine, _jobs(8), deadline=None, retry_calls=10, fatal=lambda e: True)
    assert len(engine.calls) == 1 and all("engine unusable" in why for why in iso.dropped.values())


def test_vllm_engine_kwargs_pass_quantization_only_where_the_installed_vllm_and_device_can_run_it():
    from dataclasses import replace

    from arcttt_kaggle.engines.decode_vllm import vllm_engine_kwargs, vllm_quantizations

    cfg = DecodeConfig(max_loras=3, max_lora_rank=16, dtype="auto", max_model_len=4096)
    cpu = vllm_engine_kwargs(cfg, Path("/m"), False, vllm_quantizations())
    assert cpu["dtype"] == "float32" and "quantization" not in cpu and "gpu_memory_utilization" not in cpu
    assert (cpu["enable_lora"], cpu["max_loras"], cpu["max_lora_rank"], cpu["max_model_len"]) == (True, 3, 16, 4096)
    gpu = vllm_engine_kwargs(replace(cfg, dtype="float16"), Path("/m"), True, vllm_quantizations())
    assert gpu["gpu_memory_utilization"] == 0.9 and gpu["dtype"] == "float16"
    bnb = replace(cfg, dtype="float16", quantization="bitsandbytes")
    assert "bitsandbytes" not in vllm_quantizations()  # vLLM 0.32 dropped it: the engine must refuse, not ignore
    with pytest.raises(ValueError, match="no bitsandbytes method.*backend='hf'"):
        vllm_engine_kwargs(bnb, Path("/m"), True, vllm_quantizations())
    assert vllm_engine_kwargs(bnb, Path("/m"), True, ["awq", "bitsandbytes"])["quantization"] == "bitsandbytes"
    with pytest.raises(ValueError, match="needs CUDA"):
        vllm_engine_kwargs(bnb, Path("/m"), False, ["bitsandbytes"])
    # KV blocks: vLLM's default unless DFS runs on CPU (32: a branch recomputes less of its prompt) or it is set
    dfs = replace(cfg, method="dfs", dtype="bfloat16")  # an explicit dtype: "auto" on CUDA asks the GPU
    assert "block_size" not in cpu and "block_size" not in gpu
    assert vllm_engine_kwargs(dfs, Path("/m"), False, [])["block_size"] == 32
    assert "block_size" not in vllm_engine_kwargs(dfs, Path("/m"), True, [])
    assert vllm_engine_kwargs(replace(dfs, kv_block_size=64), Path("/m"), True, [])["block_size"] == 64
    with pytest.raises(ValueError, match="multiple of 16"):
        replace(cfg, kv_block_size=20)


def test_hf_load_kwargs_build_an_nf4_config_for_bitsandbytes():
    import torch

    from arcttt_kaggle.engines.engine_base import hf_load_kwargs

    assert hf_load_kwargs("float32", "none", "cpu") == {"dtype": torch.float32}
    kw = hf_load_kwargs("auto", "bitsandbytes", "cpu")
    q = kw["quantization_config"]
    assert kw["dtype"] == torch.float32 and kw["device_map"] == "cpu"
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.float32 and q.llm_int8_skip_modules == ["lm_head"]
    assert hf_load_kwargs("float16", "bitsandbytes", "cuda")["device_map"] == {"": 0}
    with pytest.raises(ValueError, match="quantization"):
        hf_load_kwargs("float32", "gptq", "cpu")


def test_decode_config_validates_quantization_and_retry_calls():
    with pytest.raises(ValueError, match="quantization"):
        DecodeConfig(quantization="int4")
    with pytest.raises(ValueError, match="retry_calls"):
        DecodeConfig(retry_calls=-1)
    assert DecodeConfig(quantization="bitsandbytes", backend="hf").quantization == "bitsandbytes"





def test_a_cuda_context_error_is_told_apart_from_out_of_memory_and_ordinary_errors():
    from arcttt_kaggle.engines.engine_base import cuda_context_error

    class AcceleratorError(RuntimeError):  # the name torch >= 2.8 gives a CUDA error
        pass

    assert cuda_context_error(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert cuda_context_error(RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx"))
    assert cuda_context_error(AcceleratorError("anything"))
    try:
        try:
            raise RuntimeError("CUDA error: device-side assert triggered")
        except RuntimeError as inner:
            raise ValueError("engine step failed") from inner
    except ValueError as outer:
        assert cuda_context_error(outer)  # the cause counts
    assert not cuda_context_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (CUDA error)"))
    assert not cuda_context_error(ValueError("prompt too long"))


def test_a_cuda_error_is_fatal_at_once_no_retry_or_bisection():
    from arcttt_kaggle.engines.decode_isolate import run_isolated
    from arcttt_kaggle.engines.engine_base import cuda_context_error

    calls = []

    def run(batch):
        calls.append(batch)
        raise RuntimeError("CUDA error: unspecified launch failure")

    iso = run_isolated(run, _jobs(8), deadline=None, retry_calls=24, fatal=cuda_context_error)
    assert len(calls) == 1 and set(iso.dropped) == set(range(8)) and cuda_context_error(iso.fatal)
