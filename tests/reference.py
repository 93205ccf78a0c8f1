"""The reference the scorer is checked against: one full forward pass per (view, candidate), prompt + completion,
log-probabilities from the causal LM's own logits in float64. Shared by the scorer's agreement tests."""

from __future__ import annotations

import numpy as np


def reference_scores(model, fmt, task, grids, views, test_index: int = 0) -> np.ndarray:
    """[candidate, view] log-likelihood of each grid under each view: ``model`` (a transformers or PEFT model,
    in eval mode) run on prompt + completion, one sequence per pass."""
    import torch

    out = np.zeros((len(grids), len(views)))
    for v, view in enumerate(views):
        vt = view.apply_task(task)
        prompt = fmt.prompt_ids(vt.train, vt.test[test_index].input)
        for g, grid in enumerate(grids):
            comp = fmt.completion_ids(view.apply_grid(grid))
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([prompt + comp])).logits[0].double()
            lp = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
            out[g, v] = float(lp[torch.arange(len(comp)), torch.tensor(comp)].sum())
    return out
