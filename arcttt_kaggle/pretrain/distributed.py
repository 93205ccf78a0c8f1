"""Data-parallel pretraining under ``torchrun``: the process group, each rank's slice of a global batch, the model
wrapped for DDP or sharded with FSDP2, world-size-free checkpoints, and the fault hooks the tests use.

    torchrun --nproc-per-node 2 build_submission.py pretrain --data F --out out/m --tokens 100000

The run is the same at any world size: every rank builds the same global batches (the corpus stream is a function
of the config and the seed), takes rows ``rank::world`` of each (``rank_batch``; a rank whose slice is empty gets
one padding row without labels), and scales its loss by the GLOBAL count of labelled tokens of the batch
(``labelled_tokens``, computed from the global batch every rank holds, so it needs no communication) times the
world size, which DDP's gradient average (or FSDP's reduce-scatter) divides back out: the gradient of each step is
the single-process gradient of the whole batch. Decisions that must agree (the time budget, when to checkpoint,
when to stop, whether a step's loss is finite) are made from values every rank receives (``Dist.broadcast``,
``Dist.all_sum``). Checkpoints hold full (unsharded) weights and a plain ``torch.optim`` state dict, whatever the
world size, so a run resumes at another one.

A plain process (no ``WORLD_SIZE`` in the environment) makes no process group: ``Dist()`` is world size 1 and
every collective is the identity.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from dataclasses import dataclass

import numpy as np

from arcttt_kaggle.engines.format import IGNORE_INDEX

from .corpus import Batch

FAULT_ENV = "ARCTTT_PRETRAIN_FAULT"


@dataclass
class Dist:
    """This process's place in the run. ``backend`` is "" for a plain process (no process group)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""
    device: str = "cpu"
    owns_group: bool = False  # this process made the group, so it destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return bool(self.backend)

    def _tensor(self, values):
        import torch

        return torch.tensor(values, dtype=torch.float64, device=self.device)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier(device_ids=[self.local_rank]) if self.backend == "nccl" else dist.barrier()

    def all_sum(self, t):
        """``t`` summed over the ranks (in place; ``t`` itself on one process)."""
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def broadcast(self, values: list[float]) -> list[float]:
        """Rank 0's ``values`` on every rank."""
        if not self.active:
            return list(values)
        import torch.distributed as dist

        t = self._tensor([float(v) for v in values])
        dist.broadcast(t, src=0)
        return t.tolist()

    def gather(self, values: list[float]) -> list[list[float]]:
        """Every rank's ``values``, by rank."""
        if not self.active:
            return [list(values)]
        import torch.distributed as dist

        t = self._tensor([float(v) for v in values])
        out = [self._tensor([0.0] * len(values)) for _ in range(self.world)]
        dist.all_gather(out, t)
        return [o.tolist() for o in out]

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False

    def as_dict(self) -> dict:
        return {"world_size": self.world, "backend": self.backend or "none (one process)"}


def setup(device: str | None = None) -> Dist:
    """The process group torchrun describes in the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``), made here unless the caller made it: NCCL on CUDA with this rank's device
    ``cuda:LOCAL_RANK``, Gloo on CPU. Without ``WORLD_SIZE`` a plain one-process ``Dist`` (no group)."""
    import torch

    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if "WORLD_SIZE" not in os.environ:
        return Dist(device=want)
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if want.startswith("cuda"):
        torch.cuda.set_device(local)
        dev, backend = f"cuda:{local}", "nccl"
    else:
        dev, backend = "cpu", "gloo"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend, device_id=torch.device(dev) if backend == "nccl" else None)
    elif dist.get_world_size() != world:
        raise RuntimeError(f"pretrain: the process group has {dist.get_world_size()} ranks, WORLD_SIZE says {world}")
    return Dist(rank, world, local, backend, dev, owns)


def env_rank() -> int:
    """This process's rank as torchrun set it (0 in a plain process): who prints and writes before any group."""
    return int(os.environ.get("RANK", "0"))


# -- the data each rank trains on ---------------------------------------------------------------------------------
def labelled_tokens(batch: Batch) -> int:
    """Tokens of the whole batch that carry a loss (the next-token targets: labels from position 1 on)."""
    return int((batch.labels[:, 1:] != IGNORE_INDEX).sum())


def rank_batch(batch: Batch, rank: int, world: int, pad_id: int) -> Batch:
    """Rows ``rank::world`` of the global batch, cut to their own longest row (right padding: the columns cut
    held padding only). An empty slice (fewer rows than ranks) is one padding token with no label, so the rank
    still runs forward and backward (DDP and FSDP need every rank in every step) and adds nothing to the loss."""
    if world == 1:
        return batch
    mask = batch.attention_mask[rank::world]
    if len(mask) == 0:
        one = np.full((1, 1), pad_id, dtype=np.int64)
        return Batch(one, np.full((1, 1), IGNORE_INDEX, dtype=np.int64), np.ones((1, 1), dtype=np.int64), 0)
    n = int(mask.sum(1).max())
    return Batch(batch.input_ids[rank::world, :n], batch.labels[rank::world, :n], mask[:, :n], int(mask.sum()))


# -- the model across ranks ---------------------------------------------------------------------------------------
def wrap(model, d: Dist, fsdp: bool):
    """The module the step runs: the model itself on one process, DDP over it, or (``fsdp``) the model sharded in
    place with FSDP2 (``fully_shard`` on every block HF names in ``_no_split_modules``, then the root)."""
    if not d.active:
        return model
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cuda" if d.backend == "nccl" else "cpu", (d.world,))
        blocks = set(getattr(model, "_no_split_modules", None) or ())
        for m in list(model.modules()):
            if type(m).__name__ in blocks:
                fully_shard(m, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[d.local_rank] if d.backend == "nccl" else None, forward_sync_buffers=False,
               gradient_as_bucket_view=True)


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model) -> dict:
    """The unsharded weights of an FSDP2 model (a collective: every rank calls it; rank 0 receives them)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options())


def full_optimizer_state(model, opt, names: list[str]) -> dict:
    """An FSDP2 optimizer's state, unsharded (a collective), as the plain ``opt.state_dict()`` of one process:
    parameters by index in ``names`` order, so any world size (or none) loads it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(model, opt, options=_full_options())
    if not full:
        return {}
    index = {n: i for i, n in enumerate(names)}
    return {"state": {index[k]: v for k, v in full["state"].items()},
            "param_groups": [{**g, "params": [index[p] for p in g["params"]]} for g in full["param_groups"]]}


def load_full_optimizer_state(model, opt, state: dict, names: list[str]) -> None:
    """Load a plain (index-keyed) optimizer state dict into an FSDP2 model's optimizer, each rank its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    named = {"state": {names[i]: v for i, v in state["state"].items()},
             "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, opt, optim_state_dict=named, options=StateDictOptions(full_state_dict=True))


# -- fault hooks (tests) ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Faults:
    """``ARCTTT_PRETRAIN_FAULT``, comma-separated: ``kill-rank-R-at-step-S`` (rank R kills itself with SIGKILL once
    S steps are done: a rank that dies) and ``nan-at-step-S`` (the last rank's loss of step S is NaN: every rank
    must skip that step)."""

    kill: tuple[tuple[int, int], ...] = ()
    nan_steps: tuple[int, ...] = ()

    @classmethod
    def from_env(cls) -> "Faults":
        spec = os.environ.get(FAULT_ENV, "")
        kill, nan = [], []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            if m := re.fullmatch(r"kill-rank-(\d+)-at-step-(\d+)", part):
                kill.append((int(m[1]), int(m[2])))
            elif m := re.fullmatch(r"nan-at-step-(\d+)", part):
                nan.append(int(m[1]))
            else:
                raise ValueError(f"{FAULT_ENV}: unknown fault {part!r} (kill-rank-R-at-step-S, nan-at-step-S)")
        return cls(tuple(kill), tuple(nan))

    def after_step(self, d: Dist, steps_done: int) -> None:
        if (d.rank, steps_done) in self.kill:
            print(f"pretrain: fault {FAULT_ENV}: rank {d.rank} kills itself after step {steps_done}", file=sys.stderr,
                  flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    def nan_now(self, d: Dist, step: int) -> bool:
        return step in self.nan_steps and d.rank == d.world - 1
