"""Specification (issue 19) of the environment each worker process gets (``pipeline.worker_env``): its own
Unsloth compile cache under its own folder, and vLLM's FlashInfer sampler off unless the caller chose."""

from __future__ import annotations

from pathlib import Path

from arcttt_kaggle.run.pipeline import worker_env


def envs(base: dict, tmp_path: Path) -> list[dict]:
    return [worker_env(base, 2, device="cuda", worker=w, work_dir=tmp_path / "work" / f"worker{w}-0",
                       cpu_kvcache_gib=1) for w in (0, 1)]


def test_each_worker_compiles_unsloth_into_its_own_folder_even_over_a_shared_setting(tmp_path):
    for base in ({}, {"UNSLOTH_COMPILE_LOCATION": str(tmp_path / "shared_cache")}):
        a, b = envs(base, tmp_path)
        assert Path(a["UNSLOTH_COMPILE_LOCATION"]).parent == tmp_path / "work" / "worker0-0"
        assert Path(b["UNSLOTH_COMPILE_LOCATION"]).parent == tmp_path / "work" / "worker1-0"
        assert (a["CUDA_VISIBLE_DEVICES"], b["CUDA_VISIBLE_DEVICES"]) == ("0", "1")


def test_flashinfer_sampler_is_off_unless_the_caller_set_it(tmp_path):
    assert {e["VLLM_USE_FLASHINFER_SAMPLER"] for e in envs({}, tmp_path)} == {"0"}
    assert {e["VLLM_USE_FLASHINFER_SAMPLER"] for e in envs({"VLLM_USE_FLASHINFER_SAMPLER": "1"}, tmp_path)} == {"1"}


def test_the_callers_environment_is_kept_and_not_modified(tmp_path):
    base = {"PATH": "/bin", "TOKENIZERS_PARALLELISM": "true"}
    env = worker_env(base, 3, device="cpu", worker=0, work_dir=tmp_path, cpu_kvcache_gib=2.5)
    assert env["PATH"] == "/bin" and env["TOKENIZERS_PARALLELISM"] == "true" and env["OMP_NUM_THREADS"] == "3"
    assert "CUDA_VISIBLE_DEVICES" not in env and env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert base == {"PATH": "/bin", "TOKENIZERS_PARALLELISM": "true"}
