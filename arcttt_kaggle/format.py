"""The one text format: grids to token ids and back, used by training, decoding and scoring alike.

A task is encoded straight to token ids, never through a text string that a BPE tokenizer might merge:

    [bos] I <in rows> O <out rows> eos  I <in rows> O <out rows> eos ... I <query in rows> O | <query out rows> eos

where a grid is its cells row by row, one digit token per cell and one row-separator token after each row.
The prompt ends right after the query's ``O`` marker; the completion is the output grid and ``eos``.
Tokens per grid = cells + rows + 1 marker: exactly the floor, plus one ``eos`` per output and one ``bos``.

``ArcFormat`` checks, for the tokenizer it is given, that every digit, the row separator and both markers are
single tokens (and that they round-trip through ``encode``), so the same ids mean the same thing when vLLM
detokenizes or when a human reads a prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

from .data import MAX_SIDE, NUM_COLORS, Grid, Pair

IGNORE_INDEX = -100  # label value the loss ignores (the transformers/PyTorch convention)
LossOn = Literal["all_outputs", "query_output"]


class TokenizerError(ValueError):
    """The tokenizer cannot represent the format one token per symbol."""


@dataclass(frozen=True)
class FormatSpec:
    """The symbols of the format. Defaults are single tokens in the tiny ARC tokenizer, Qwen2.5 and Llama-3."""

    input_marker: str = field(default="I", metadata={"help": "token that opens an input grid"})
    output_marker: str = field(default="O", metadata={"help": "token that opens an output grid"})
    row_separator: str = field(default="\n", metadata={"help": "token after every grid row"})

    def __post_init__(self):
        symbols = [self.input_marker, self.output_marker, self.row_separator]
        if len(set(symbols)) != 3 or any(s in "0123456789" or not s for s in symbols):
            raise ValueError(f"markers and row separator must be distinct non-digit strings, got {symbols}")


@dataclass(frozen=True)
class Encoded:
    """Token ids of one training example and their labels (``IGNORE_INDEX`` where there is no loss)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def num_loss_tokens(self) -> int:
        return sum(1 for v in self.labels if v != IGNORE_INDEX)


@dataclass(frozen=True)
class Parsed:
    """A completion parsed back to a grid; ``grid`` is None and ``error`` says why when it did not parse."""

    grid: Grid | None
    error: str = ""


class ArcFormat:
    """Encodes demonstrations + query to token ids for one tokenizer, and parses completions back to grids."""

    def __init__(self, tokenizer, spec: FormatSpec = FormatSpec()):
        self.spec = spec
        self.digit_ids = [self._single_token(tokenizer, str(d), f"color digit {d}") for d in range(NUM_COLORS)]
        self.row_id = self._single_token(tokenizer, spec.row_separator, "row separator")
        self.input_id = self._single_token(tokenizer, spec.input_marker, "input marker")
        self.output_id = self._single_token(tokenizer, spec.output_marker, "output marker")
        if tokenizer.eos_token_id is None:
            raise TokenizerError("the tokenizer has no eos token; the format ends every output with eos")
        self.eos_id = int(tokenizer.eos_token_id)
        self.bos_id = None if tokenizer.bos_token_id is None else int(tokenizer.bos_token_id)
        ids = self.digit_ids + [self.row_id, self.input_id, self.output_id, self.eos_id]
        if len(set(ids)) != len(ids):
            raise TokenizerError(f"format symbols map to colliding token ids: {ids}")
        self._digit_of = {tid: d for d, tid in enumerate(self.digit_ids)}
        self._lut = np.asarray(self.digit_ids, dtype=np.int64)

    @staticmethod
    def _single_token(tokenizer, text: str, what: str) -> int:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise TokenizerError(f"{what} {text!r} is {len(ids)} tokens {ids} in this tokenizer; the format "
                                 f"needs one token per symbol")
        # One token is not enough: a symbol missing from the vocabulary encodes to the single unk token.
        if ids[0] == tokenizer.unk_token_id or tokenizer.decode(ids) != text:
            raise TokenizerError(f"{what} {text!r} does not round-trip in this tokenizer (encodes to {ids}, "
                                 f"decodes to {tokenizer.decode(ids)!r}); the format needs it in the vocabulary")
        return int(ids[0])

    # -- encoding -------------------------------------------------------------------------------------------
    def grid_ids(self, grid: Grid) -> list[int]:
        g = np.asarray(grid)
        h, w = g.shape
        out = np.empty((h, w + 1), dtype=np.int64)
        out[:, :w] = self._lut[g]
        out[:, w] = self.row_id
        return out.ravel().tolist()

    def prompt_ids(self, demos: Sequence[Pair], query_input: Grid) -> list[int]:
        """Demonstrations, then the query input and the output marker: what the model completes."""
        ids = [] if self.bos_id is None else [self.bos_id]
        for p in demos:
            ids += [self.input_id, *self.grid_ids(p.input), self.output_id, *self.grid_ids(p.output), self.eos_id]
        ids += [self.input_id, *self.grid_ids(query_input), self.output_id]
        return ids

    def completion_ids(self, output: Grid) -> list[int]:
        return [*self.grid_ids(output), self.eos_id]

    def encode_example(self, demos: Sequence[Pair], query: Pair, loss_on: LossOn = "all_outputs") -> Encoded:
        """A training example; loss on the query output (and on every demonstration output with
        ``all_outputs``, the MIT paper's "all prefixes": each demonstration output is predicted from the
        demonstrations before it, so one sequence trains K predictions)."""
        if query.output is None:
            raise ValueError("a training query needs its output")
        ids: list[int] = [] if self.bos_id is None else [self.bos_id]
        labels: list[int] = [IGNORE_INDEX] * len(ids)
        for p in list(demos) + [query]:
            prefix = [self.input_id, *self.grid_ids(p.input), self.output_id]
            target = self.completion_ids(p.output)
            learn = loss_on == "all_outputs" or p is query
            ids += prefix + target
            labels += [IGNORE_INDEX] * len(prefix) + (target if learn else [IGNORE_INDEX] * len(target))
        return Encoded(ids, labels)

    @staticmethod
    def max_output_tokens(height: int, width: int) -> int:
        return height * (width + 1) + 1

    @staticmethod
    def output_bound(demos: Sequence[Pair], query_input: Grid) -> tuple[int, int]:
        """(height, width) of the largest plausible output: as large as any demonstration output or the query
        input, scaled by the largest output/input ratio seen, capped at 30 per side."""
        hs = [p.output.shape[0] for p in demos] + [query_input.shape[0]]
        ws = [p.output.shape[1] for p in demos] + [query_input.shape[1]]
        ratio_h = max([p.output.shape[0] / p.input.shape[0] for p in demos], default=1.0)
        ratio_w = max([p.output.shape[1] / p.input.shape[1] for p in demos], default=1.0)
        h = min(MAX_SIDE, max(max(hs), int(np.ceil(query_input.shape[0] * ratio_h))))
        w = min(MAX_SIDE, max(max(ws), int(np.ceil(query_input.shape[1] * ratio_w))))
        return h, w

    def max_new_tokens(self, demos: Sequence[Pair], query_input: Grid) -> int:
        """Bound for generation: the ``output_bound`` grid's tokens (at most 30×31 + eos)."""
        return self.max_output_tokens(*self.output_bound(demos, query_input))

    # -- the grid grammar (constrained decoding) -------------------------------------------------------------
    def grid_regex(self, height: int, width: int) -> str:
        """The completion text (before eos) of every grid of at most ``height`` × ``width``: equal rows of 1..width
        digits, each closed by the row separator, 1..height rows. A regex (counted repetition, no backrefs), so
        one alternative per row width; vLLM's structured outputs compile it to a token mask."""
        sep = "\\n" if self.spec.row_separator == "\n" else re.escape(self.spec.row_separator)
        return "|".join(f"(?:[0-9]{{{w}}}{sep}){{1,{height}}}" for w in range(1, width + 1))

    def grid_tokens(self) -> list[int]:
        """The only ids a grid completion uses: the digits, the row separator and eos."""
        return [*self.digit_ids, self.row_id, self.eos_id]

    def grid_start(self, height: int, width: int) -> "GridState":
        return GridState(self, height, width)

    def token_count(self, demos: Sequence[Pair], query: Pair) -> int:
        """Tokens of a full training example (prompt + query output), without building it."""
        def grid(g: Grid) -> int:
            return g.shape[0] * (g.shape[1] + 1) + 1  # cells + row separators + marker
        n = 0 if self.bos_id is None else 1
        for p in list(demos) + [query]:
            n += grid(p.input) + (grid(p.output) + 1 if p.output is not None else 1)
        return n

    # -- parsing --------------------------------------------------------------------------------------------
    def parse(self, token_ids: Sequence[int]) -> Parsed:
        """Token ids of a completion to a grid: rows of digits each closed by the row separator, up to eos.
        Anything else (a stray marker, ragged rows, no rows, more than 30 per side) is unparsable; never raises."""
        rows: list[list[int]] = []
        row: list[int] = []
        for tid in token_ids:
            tid = int(tid)
            if tid == self.eos_id:
                break
            if tid == self.row_id:
                if not row:
                    return Parsed(None, f"empty row {len(rows)}")
                rows.append(row)
                row = []
            elif tid in self._digit_of:
                row.append(self._digit_of[tid])
            else:
                return Parsed(None, f"unexpected token id {tid} in row {len(rows)}")
        if row:
            return Parsed(None, "last row not closed by a row separator")
        if not rows:
            return Parsed(None, "no rows")
        if len({len(r) for r in rows}) != 1:
            return Parsed(None, f"ragged rows of lengths {sorted({len(r) for r in rows})}")
        if len(rows) > MAX_SIDE or len(rows[0]) > MAX_SIDE:
            return Parsed(None, f"{len(rows)}x{len(rows[0])} exceeds {MAX_SIDE} per side")
        return Parsed(np.asarray(rows, dtype=np.uint8))

    def render(self, token_ids: Sequence[int]) -> str:
        """Human-readable text of ids (for logs and the report): markers and digits as themselves."""
        names = {self.input_id: self.spec.input_marker, self.output_id: self.spec.output_marker,
                 self.row_id: "\n", self.eos_id: "<eos>"}
        names.update({tid: str(d) for d, tid in enumerate(self.digit_ids)})
        if self.bos_id is not None:
            names[self.bos_id] = "<bos>"
        return "".join(names.get(int(t), f"<{int(t)}>") for t in token_ids)


def floor_tokens(demos: Sequence[Pair], query: Pair) -> int:
    """The format floor of a task: cells + rows + one per grid (no bos/eos)."""
    grids = [g for p in list(demos) + [query] for g in (p.input, p.output) if g is not None]
    return sum(g.shape[0] * g.shape[1] + g.shape[0] + 1 for g in grids)


class GridState:
    """Where a completion stands in the grid grammar of ``ArcFormat.grid_regex`` (the same language, on token
    ids): ``allowed()`` lists the ids that keep it a well-formed grid within the bound, ``push(id)`` advances.
    The transformers backend's logits processor runs one per sequence; vLLM uses the regex."""

    def __init__(self, fmt: ArcFormat, height: int, width: int):
        if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
            raise ValueError(f"grid bound {height}x{width} outside 1..{MAX_SIDE}")
        self.fmt, self.height, self.width = fmt, height, width
        self.row_width = 0  # fixed by the first row
        self.col = 0
        self.rows = 0
        self.done = False

    def allowed(self) -> list[int]:
        f = self.fmt
        if self.done or self.rows == self.height:
            return [f.eos_id]
        limit = self.row_width or self.width
        ids = list(f.digit_ids) if self.col < limit else []
        if self.col and (not self.row_width or self.col == self.row_width):
            ids.append(f.row_id)
        if not self.col and self.rows:
            ids.append(f.eos_id)
        return ids

    def push(self, token_id: int) -> None:
        """Advance by one token; a token outside ``allowed()`` raises (the grammar was not enforced)."""
        token_id = int(token_id)
        if token_id not in self.allowed():
            raise ValueError(f"token id {token_id} breaks the grid grammar at row {self.rows}, column {self.col}")
        if token_id == self.fmt.eos_id:
            self.done = True
        elif token_id == self.fmt.row_id:
            self.row_width = self.row_width or self.col
            self.rows += 1
            self.col = 0
        else:
            self.col += 1
