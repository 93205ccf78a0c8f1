"""References the tests check the engines and the format against, shared by their test files:

- ``reference_scores``: what the scorer must equal, one full forward pass per (view, candidate), prompt +
  completion, log-probabilities from the causal LM's own logits in float64;
- ``grammar_regex_parser_agree``: the three readings of a completion (the grid grammar step by step, the regex
  vLLM compiles, the parser) must accept the same ones."""

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


def mutated(ids: list[int], how: int, at: int, tok: int) -> list[int]:
    """``ids`` kept (0), with the token at ``at`` replaced by ``tok`` (1), deleted (2), or ``tok`` inserted (3)."""
    i = at % len(ids)
    return {0: ids, 1: ids[:i] + [tok] + ids[i + 1:], 2: ids[:i] + ids[i + 1:], 3: ids[:i] + [tok] + ids[i:]}[how]


def grammar_regex_parser_agree(fmt, ids: list[int], height: int, width: int) -> None:
    """``ids`` cut after its first eos: the grammar accepts it iff the parser reads a grid within ``height`` x
    ``width`` ending in eos iff the regex matches its text. (The parser also takes a completion cut right after
    a row; the grammar and the regex end in eos.)"""
    import re

    ids = ids[:ids.index(fmt.eos_id) + 1] if fmt.eos_id in ids else ids
    state, ok = fmt.grid_start(height, width), True
    for t in ids:
        if t not in state.allowed():
            ok = False
            break
        state.push(t)
    ok = ok and state.done
    parsed = fmt.parse(ids)
    in_bound = (parsed.grid is not None and parsed.grid.shape[0] <= height and parsed.grid.shape[1] <= width
                and bool(ids) and ids[-1] == fmt.eos_id)
    text_ok = bool(ids) and ids[-1] == fmt.eos_id and re.fullmatch(fmt.grid_regex(height, width),
                                                                     fmt.render(ids[:-1]))
    assert ok == in_bound == bool(text_ok)
