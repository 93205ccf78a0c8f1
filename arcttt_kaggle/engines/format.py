"""The one text format: grids to token ids and back, used by training, decoding and scoring alike.

A task is encoded straight to token ids, never through a text string that a BPE tokenizer might merge. The
layout is a named *profile*; the default ``kit`` is the kit's own:

    [bos] I <in rows> O <out rows> eos  I <in rows> O <out rows> eos ... I <query in rows> O | <query out rows> eos

where a grid is its cells row by row, one digit token per cell and one row-separator token after each row.
The prompt ends right after the query's ``O`` marker; the completion is the output grid and ``eos``.
Tokens per grid = cells + rows + 1 marker: exactly the floor, plus one ``eos`` per output and one ``bos``.

Two more profiles reproduce the layouts public ARC checkpoints were trained on (``Layout``; the exact strings
and their sources are in ``PROFILE_LAYOUTS``' comments):

- ``architects`` (the ARChitects, ARC Prize 2024): ``[bos]`` + a 48-letter preprompt, then per example
  ``I <in rows> +/-=O <out rows> eos``; rows closed by ``\\n`` as in ``kit``.
- ``nvarc`` (NVARC, ARC Prize 2025; Qwen chat tokens): no bos; per example
  ``<|im_start|> user \\n <in rows> <|im_end|> <|im_start|> assistant \\n <out rows> <|im_end|>``, where the
  rows are *joined* by ``\\n`` (no separator after the last row) and ``<|im_end|>`` is the end of an output.

``ArcFormat`` checks, for the tokenizer it is given, that every digit, the row separator and every piece of the
profile are single tokens (and that they round-trip through ``encode``), so the same ids mean the same thing when
vLLM detokenizes or when a human reads a prompt. ``ArcFormat.for_model`` picks the profile of a model folder
(``arc_format.json`` written by model preparation, else ``detect_profile``, else ``kit``).
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from arcttt_kaggle.arc.data import MAX_SIDE, NUM_COLORS, Grid, Pair

IGNORE_INDEX = -100  # label value the loss ignores (the transformers/PyTorch convention)
LossOn = Literal["all_outputs", "query_output"]
PROFILES = ("kit", "architects", "nvarc")
PROFILE_FILE = "arc_format.json"  # written into a prepared model folder (model_prep): {"profile": ..., ...}
DIGITS = tuple(str(d) for d in range(NUM_COLORS))


class TokenizerError(ValueError):
    """The tokenizer cannot represent the format one token per symbol."""


@dataclass(frozen=True)
class FormatSpec:
    """The symbols of the format. Defaults are single tokens in the tiny ARC tokenizer, Qwen2.5 and Llama-3.
    The markers and separator apply to the ``kit`` profile; the other profiles fix their own."""

    input_marker: str = field(default="I", metadata={"help": "token that opens an input grid (kit)"})
    output_marker: str = field(default="O", metadata={"help": "token that opens an output grid (kit)"})
    row_separator: str = field(default="\n", metadata={"help": "token after every grid row (kit)"})
    profile: str = field(default="kit", metadata={"help": f"prompt layout, one of {PROFILES}"})

    def __post_init__(self):
        symbols = [self.input_marker, self.output_marker, self.row_separator]
        if len(set(symbols)) != 3 or any(s in "0123456789" or not s for s in symbols):
            raise ValueError(f"markers and row separator must be distinct non-digit strings, got {symbols}")
        if self.profile not in PROFILES:
            raise ValueError(f"unknown format profile {self.profile!r}; choose one of {PROFILES}")
        if self.profile != "kit" and symbols != ["I", "O", "\n"]:
            raise ValueError(f"profile {self.profile!r} fixes its own symbols; custom markers {symbols} apply to "
                             f"'kit' only")


@dataclass(frozen=True)
class FormatConfig:
    """Which prompt layout a run speaks, and how the base model is prepared for it (``model_prep``)."""

    profile: str = field(default="auto", metadata={"help": f"'auto' (the model folder's arc_format.json, else "
                         f"detected from its vocabulary, else 'kit') or one of {PROFILES}"})
    reduce_vocab: bool = field(default=True, metadata={"help": "prepare a copy of a full-vocabulary base whose "
                               "embedding and lm_head keep only the profile's tokens (a base that arrives "
                               "reduced is used as it is)"})
    dequantize: Literal["auto", "never", "always"] = field(default="auto", metadata={"help": "a bitsandbytes 4-bit "
                               "base: 'auto' dequantizes it once for vLLM/the scorer where the memory plan says a "
                               "16-bit copy fits, else keeps it 4-bit; 'always'/'never' force it"})

    def __post_init__(self):
        if self.profile not in ("auto",) + PROFILES:
            raise ValueError(f"format.profile must be 'auto' or one of {PROFILES}, got {self.profile!r}")
        if self.dequantize not in ("auto", "never", "always"):
            raise ValueError(f"format.dequantize must be auto, never or always, got {self.dequantize!r}")


@dataclass(frozen=True)
class Layout:
    """A profile's layout as token pieces (each piece must be one token): what opens the text, an input, an
    output, how rows are delimited, and what ends an output. ``keep``: the pieces a reduced vocabulary keeps
    (besides the model's bos/eos/pad)."""

    name: str
    preprompt: tuple[str, ...]
    query_beg: tuple[str, ...]
    reply_beg: tuple[str, ...]
    rows: Literal["closed", "joined"]  # closed: separator after every row; joined: between rows only
    row_separator: str
    eos: str | None  # None: the tokenizer's eos token
    bos: bool  # prepend the tokenizer's bos when it has one
    keep: tuple[str, ...]

    # -- token arithmetic from shapes alone: what the planner counts before any tokenizer is loaded -----------
    # Exact for a tokenizer that has a bos when ``bos`` is set (one token more than a bos-less one would use);
    # ``tests/test_format_profiles.py`` checks them against ``ArcFormat`` on real tokenizers.
    def grid_count(self, height: int, width: int) -> int:
        """Tokens of a ``height`` x ``width`` grid: cells and row separators (closed: one per row)."""
        return height * (width + 1) - (1 if self.rows == "joined" else 0)

    def prompt_count(self, demos: Sequence[Pair], query_input: Grid) -> int:
        """Tokens of ``ArcFormat.prompt_ids``: head, each demonstration with its end, the query up to its reply."""
        n = int(self.bos) + len(self.preprompt)
        for p in demos:
            n += self.example_count(*p.input.shape, *p.output.shape)
        return n + len(self.query_beg) + self.grid_count(*np.shape(query_input)) + len(self.reply_beg)

    def example_count(self, in_h: int, in_w: int, out_h: int, out_w: int) -> int:
        """Tokens of one demonstration: its opening, input, reply marker, output and end of output."""
        return len(self.query_beg) + self.grid_count(in_h, in_w) + len(self.reply_beg) + \
            self.grid_count(out_h, out_w) + 1

    def token_count(self, demos: Sequence[Pair], query: Pair) -> int:
        """Tokens of a training example (``ArcFormat.encode_example``), or of a prompt when ``query.output`` is
        None: the ``TokenCounter`` TTT data trims with."""
        n = self.prompt_count(demos, query.input)
        return n if query.output is None else n + self.grid_count(*query.output.shape) + 1

    def output_count(self, height: int, width: int) -> int:
        """Tokens of a ``height`` x ``width`` completion: the grid and its end of output."""
        return self.grid_count(height, width) + 1


# The ARChitects (github.com/da-fr/arc-prize-2024, training_code/*.py and their arc_loader ``fmt_opts``):
#   preprompt='ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjklmnpqrstuvwxyz', query_beg='I', reply_beg='\n+/-=O',
#   reply_end='\n' + eos, lines_sep='\n'; a grid is lines_sep.join(rows), so reply_beg's and reply_end's leading
#   '\n' close the last row: every row is closed, as in ``kit``. The text is tokenized with the bos the
#   tokenizer adds (their get_length: "+= 1  # for bos token"). The reduced vocabulary keeps
#   list('A..Za..z0..9!?.:,;*+/-=') + the newline (keep_single_char_tokens, model_tools.py).
ARCHITECTS_PREPROMPT = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjklmnpqrstuvwxyz"
ARCHITECTS_KEEP = tuple(string.ascii_uppercase + string.ascii_lowercase + string.digits + "!?.:,;*+/-=") + ("\n",)
# NVARC (Kaggle notebook sorokin/arc2-qwen3-unsloth-flash-lora-batch4-queue, arc_loader.QwenFormatter):
#   demonstration: "<|im_start|>user\n" + in + "<|im_end|><|im_start|>assistant\n" + out + "<|im_end|>";
#   query: "<|im_start|>user\n" + in + "<|im_end|><|im_start|>assistant\n"; reply: out + "<|im_end|>";
#   a grid is rows joined by "\n" (convert_grid_to_string strips the last newline); tokenizer.encode adds no
#   bos (Qwen has none). Their 16-token vocabulary (arc_solver.py ARC_VOCAB): digits 0-9 -> 0-9, "\n" -> 10,
#   user 11, assistant 12, pad 13, <|im_end|> 15 (eos): Qwen's ids of these 16 tokens, in their original order.
NVARC_QUERY = ("<|im_start|>", "user", "\n")
NVARC_REPLY = ("<|im_end|>", "<|im_start|>", "assistant", "\n")


def layout_of(spec: FormatSpec) -> Layout:
    """The layout of ``spec.profile`` (``kit`` takes its markers from the spec)."""
    if spec.profile == "kit":
        return Layout("kit", (), (spec.input_marker,), (spec.output_marker,), "closed", spec.row_separator, None,
                      True, DIGITS + (spec.row_separator, spec.input_marker, spec.output_marker))
    if spec.profile == "architects":
        return Layout("architects", tuple(ARCHITECTS_PREPROMPT), ("I",), tuple("+/-=O"), "closed", "\n", None, True,
                      ARCHITECTS_KEEP)
    return Layout("nvarc", (), NVARC_QUERY, NVARC_REPLY, "joined", "\n", "<|im_end|>", False,
                  DIGITS + ("\n", "<|im_start|>", "user", "<|im_end|>", "assistant"))


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


def single_token(tokenizer, text: str, what: str) -> int:
    """The one token id of ``text``; a ``TokenizerError`` naming ``what`` when it is not exactly one token that
    decodes back to ``text``."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise TokenizerError(f"{what} {text!r} is {len(ids)} tokens {ids} in this tokenizer; the format "
                             f"needs one token per symbol")
    # One token is not enough: a symbol missing from the vocabulary encodes to the single unk token.
    if ids[0] == tokenizer.unk_token_id or tokenizer.decode(ids) != text:
        raise TokenizerError(f"{what} {text!r} does not round-trip in this tokenizer (encodes to {ids}, "
                             f"decodes to {tokenizer.decode(ids)!r}); the format needs it in the vocabulary")
    return int(ids[0])


def detect_profile(tokenizer, max_vocab: int = 1024) -> str | None:
    """The profile a *reduced* vocabulary was cut for, when that is unambiguous: its non-special tokens are
    exactly a profile's ``keep`` set (the ARChitects' 77 symbols, NVARC's 15 pieces). A full vocabulary (more
    than ``max_vocab`` tokens) holds every profile's symbols, so it says nothing: None."""
    if len(tokenizer) > max_vocab:
        return None
    pieces = {tokenizer.decode([i]) for i in range(len(tokenizer))}
    named = {tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token, "<|endoftext|>"}
    for name in ("architects", "nvarc"):
        keep = set(layout_of(FormatSpec(profile=name)).keep)
        if keep <= pieces and pieces - keep <= named:
            return name
    return None


def profile_of_model(model_dir: str | Path, tokenizer=None) -> tuple[str, str]:
    """(profile, how it was chosen) for a model folder: its ``arc_format.json``, else ``detect_profile`` on its
    tokenizer (when given), else ``kit``."""
    marker = Path(model_dir) / PROFILE_FILE
    if marker.exists():
        profile = json.loads(marker.read_text()).get("profile")
        if profile not in PROFILES:
            raise ValueError(f"{marker}: profile {profile!r} is not one of {PROFILES}")
        return profile, f"{PROFILE_FILE}"
    detected = detect_profile(tokenizer) if tokenizer is not None else None
    return (detected, "detected from the vocabulary") if detected else ("kit", "default")


class ArcFormat:
    """Encodes demonstrations + query to token ids for one tokenizer, and parses completions back to grids."""

    def __init__(self, tokenizer, spec: FormatSpec = FormatSpec()):
        self.spec = spec
        self.layout = lay = layout_of(spec)
        self.profile = lay.name
        self.joined = lay.rows == "joined"
        self.digit_ids = [single_token(tokenizer, str(d), f"color digit {d}") for d in range(NUM_COLORS)]
        self.row_id = single_token(tokenizer, lay.row_separator, "row separator")
        self.preprompt_ids = [single_token(tokenizer, t, "preprompt symbol") for t in lay.preprompt]
        self.query_ids = [single_token(tokenizer, t, "input marker") for t in lay.query_beg]
        self.reply_ids = [single_token(tokenizer, t, "output marker") for t in lay.reply_beg]
        # The named markers: the first token of an input's opening, the last non-separator one of an output's.
        self.input_id = self.query_ids[0]
        self.output_id = [t for t in self.reply_ids if t != self.row_id][-1]
        if lay.eos is None:
            if tokenizer.eos_token_id is None:
                raise TokenizerError("the tokenizer has no eos token; the format ends every output with eos")
            self.eos_id = int(tokenizer.eos_token_id)
        else:
            self.eos_id = single_token(tokenizer, lay.eos, f"end of output ({lay.name})")
        self.bos_id = None if not lay.bos or tokenizer.bos_token_id is None else int(tokenizer.bos_token_id)
        ids = self.digit_ids + [self.row_id, self.input_id, self.output_id, self.eos_id]
        if len(set(ids)) != len(ids):
            raise TokenizerError(f"format symbols map to colliding token ids: {ids}")
        # nvarc's <|im_end|> closes the user turn too (it is the eos): only digits must stay grid-only
        structure = set(self.preprompt_ids + self.query_ids + self.reply_ids)
        if structure & set(self.digit_ids):
            raise TokenizerError(f"profile {lay.name!r} pieces collide with digit ids: "
                                 f"{sorted(structure & set(self.digit_ids))}")
        self._digit_of = {tid: d for d, tid in enumerate(self.digit_ids)}
        self._lut = np.asarray(self.digit_ids, dtype=np.int64)

    @classmethod
    def for_model(cls, tokenizer, model_dir: str | Path) -> "ArcFormat":
        """The format of a model folder: the profile ``profile_of_model`` picks, with the default symbols."""
        return cls(tokenizer, FormatSpec(profile=profile_of_model(model_dir, tokenizer)[0]))

    @staticmethod
    def _single_token(tokenizer, text: str, what: str) -> int:
        return single_token(tokenizer, text, what)

    # -- encoding -------------------------------------------------------------------------------------------
    def grid_ids(self, grid: Grid) -> list[int]:
        g = np.asarray(grid)
        h, w = g.shape
        out = np.empty((h, w + 1), dtype=np.int64)
        out[:, :w] = self._lut[g]
        out[:, w] = self.row_id
        ids = out.ravel().tolist()
        return ids[:-1] if self.joined else ids

    def _head(self) -> list[int]:
        return ([] if self.bos_id is None else [self.bos_id]) + self.preprompt_ids

    def prompt_ids(self, demos: Sequence[Pair], query_input: Grid) -> list[int]:
        """Demonstrations, then the query input and the output marker: what the model completes."""
        ids = self._head()
        for p in demos:
            ids += [*self.query_ids, *self.grid_ids(p.input), *self.reply_ids, *self.grid_ids(p.output), self.eos_id]
        ids += [*self.query_ids, *self.grid_ids(query_input), *self.reply_ids]
        return ids

    def completion_ids(self, output: Grid) -> list[int]:
        return [*self.grid_ids(output), self.eos_id]

    def encode_example(self, demos: Sequence[Pair], query: Pair, loss_on: LossOn = "all_outputs") -> Encoded:
        """A training example; loss on the query output (and on every demonstration output with
        ``all_outputs``, the MIT paper's "all prefixes": each demonstration output is predicted from the
        demonstrations before it, so one sequence trains K predictions)."""
        if query.output is None:
            raise ValueError("a training query needs its output")
        ids: list[int] = self._head()
        labels: list[int] = [IGNORE_INDEX] * len(ids)
        for p in list(demos) + [query]:
            prefix = [*self.query_ids, *self.grid_ids(p.input), *self.reply_ids]
            target = self.completion_ids(p.output)
            learn = loss_on == "all_outputs" or p is query
            ids += prefix + target
            labels += [IGNORE_INDEX] * len(prefix) + (target if learn else [IGNORE_INDEX] * len(target))
        return Encoded(ids, labels)

    @staticmethod
    def max_output_tokens(height: int, width: int) -> int:
        """Tokens of a ``height`` x ``width`` completion with closed rows (kit, architects); one more than a
        joined-rows completion (nvarc) needs, so a bound for every profile."""
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
        digits, 1..height rows, each closed by the row separator (joined profiles: separated by it). A regex
        (counted repetition, no backrefs), so one alternative per row width; vLLM's structured outputs compile it
        to a token mask."""
        sep = "\\n" if self.spec.row_separator == "\n" else re.escape(self.spec.row_separator)
        if self.joined:
            return "|".join(f"[0-9]{{{w}}}(?:{sep}[0-9]{{{w}}}){{0,{height - 1}}}" for w in range(1, width + 1))
        return "|".join(f"(?:[0-9]{{{w}}}{sep}){{1,{height}}}" for w in range(1, width + 1))

    def grid_tokens(self) -> list[int]:
        """The only ids a grid completion uses: the digits, the row separator and eos."""
        return [*self.digit_ids, self.row_id, self.eos_id]

    def grid_start(self, height: int, width: int) -> "GridState":
        return GridState(self, height, width)

    def grid_token_count(self, grid: Grid) -> int:
        h, w = np.shape(grid)
        return h * (w + 1) - (1 if self.joined else 0)

    def token_count(self, demos: Sequence[Pair], query: Pair) -> int:
        """Tokens of a full training example (prompt + query output), without building it."""
        n = len(self._head())
        per_pair = len(self.query_ids) + len(self.reply_ids)
        for p in list(demos) + [query]:
            n += per_pair + self.grid_token_count(p.input)
            n += self.grid_token_count(p.output) + 1 if p.output is not None else 0
        return n

    # -- parsing --------------------------------------------------------------------------------------------
    def parse(self, token_ids: Sequence[int]) -> Parsed:
        """Token ids of a completion to a grid: rows of digits each closed by the row separator (joined
        profiles: separated by it, the last row ended by eos or the end of the ids), up to eos. Anything else
        (a stray marker, ragged rows, no rows, more than 30 per side) is unparsable; never raises."""
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
        if self.joined:
            if not row:
                return Parsed(None, "no rows" if not rows else f"empty row {len(rows)} (separator before the end)")
            rows.append(row)
        elif row:
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
        lay = self.layout
        names = {tid: text for tid, text in zip(self.preprompt_ids + self.query_ids + self.reply_ids,
                                                 lay.preprompt + lay.query_beg + lay.reply_beg)}
        names.update({self.input_id: lay.query_beg[0], self.row_id: "\n", self.eos_id: "<eos>"})
        if lay.name == "kit":
            names[self.output_id] = self.spec.output_marker
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
        row_complete = self.col and (not self.row_width or self.col == self.row_width)
        if f.joined:  # a separator only where another row fits; eos ends the current (complete) row
            if row_complete and self.rows + 1 < self.height:
                ids.append(f.row_id)
            if row_complete:
                ids.append(f.eos_id)
            return ids
        if row_complete:
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
