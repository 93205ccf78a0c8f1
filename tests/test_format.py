"""Specification of the one text format (``arcttt_kaggle.engines.format``): fast, no model engine, only tokenizers.

Token ids of the tiny tokenizer: pad 0, bos 1, eos 2, unk 3, digits 0-9 -> 4-13, "\\n" 14, "I" 15, "O" 16.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcttt_kaggle.arc.data import MAX_SIDE, Pair
from arcttt_kaggle.engines.format import IGNORE_INDEX, ArcFormat, FormatSpec, TokenizerError, floor_tokens
from arcttt_kaggle.engines.tinymodel import build_tokenizer
from reference import grammar_regex_parser_agree, mutated

BOS, EOS, ROW, I, O = 1, 2, 14, 15, 16


def D(d: int) -> int:  # noqa: N802  token id of a digit
    return 4 + d


@pytest.fixture(scope="module")
def fmt() -> ArcFormat:
    return ArcFormat(build_tokenizer())


def grids(max_side: int = MAX_SIDE):
    return st.tuples(st.integers(1, max_side), st.integers(1, max_side), st.integers(0, 2**32 - 1)).map(
        lambda hws: np.random.default_rng(hws[2]).integers(0, 10, (hws[0], hws[1])).astype(np.uint8))


def grid(rows) -> np.ndarray:
    return np.asarray(rows, dtype=np.uint8)


# -- encoding -------------------------------------------------------------------------------------------------
def test_symbol_ids_of_the_tiny_tokenizer(fmt):
    assert fmt.digit_ids == [D(d) for d in range(10)]
    assert (fmt.row_id, fmt.input_id, fmt.output_id, fmt.eos_id, fmt.bos_id) == (ROW, I, O, EOS, BOS)


@settings(max_examples=60, deadline=None)
@given(grids())
def test_completion_round_trips_through_parse(fmt, g):
    ids = fmt.completion_ids(g)
    assert len(ids) == fmt.max_output_tokens(*g.shape) == g.shape[0] * (g.shape[1] + 1) + 1
    parsed = fmt.parse(ids)
    assert parsed.error == "" and parsed.grid.dtype == np.uint8 and np.array_equal(parsed.grid, g)
    assert fmt.render(ids) == "\n".join("".join(map(str, r)) for r in g) + "\n<eos>"


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(grids(8), grids(8)), min_size=1, max_size=4), grids(8), grids(8))
def test_training_example_is_prompt_plus_completion(fmt, demo_grids, q_in, q_out):
    demos = [Pair(a, b) for a, b in demo_grids]
    query = Pair(q_in, q_out)
    enc = fmt.encode_example(demos, query)
    prompt = fmt.prompt_ids(demos, q_in)
    assert enc.input_ids == prompt + fmt.completion_ids(q_out)
    assert len(enc.labels) == len(enc.input_ids) == fmt.token_count(demos, query)
    # Exactly the floor, plus one bos and one eos per output grid.
    assert fmt.token_count(demos, query) == floor_tokens(demos, query) + 1 + len(demos) + 1
    assert fmt.parse(enc.input_ids[len(prompt):]).grid.tolist() == q_out.tolist()


def test_loss_mask_exact_positions(fmt):
    demo = Pair(grid([[1, 2]]), grid([[3]]))
    query = Pair(grid([[4]]), grid([[5, 6], [7, 8]]))
    expected_ids = [BOS, I, D(1), D(2), ROW, O, D(3), ROW, EOS,  # 0..8: demonstration
                    I, D(4), ROW, O, D(5), D(6), ROW, D(7), D(8), ROW, EOS]  # 9..19: query
    query_out = set(range(13, 20))
    for loss_on, learned in (("all_outputs", {6, 7, 8} | query_out), ("query_output", query_out)):
        enc = fmt.encode_example([demo], query, loss_on)
        assert enc.input_ids == expected_ids
        assert {i for i, v in enumerate(enc.labels) if v != IGNORE_INDEX} == learned, loss_on
        assert all(enc.labels[i] == enc.input_ids[i] for i in learned)
        assert enc.num_loss_tokens == len(learned)
    assert fmt.prompt_ids([demo], query.input) == expected_ids[:13]
    with pytest.raises(ValueError, match="needs its output"):
        fmt.encode_example([demo], Pair(query.input))


def test_max_new_tokens_bounds_the_output(fmt, sample_tasks):
    for task in sample_tasks.values():
        for p in task.test:
            bound = fmt.max_new_tokens(task.train, p.input)
            assert len(fmt.completion_ids(p.output)) <= bound <= MAX_SIDE * (MAX_SIDE + 1) + 1, task.id
    # An upscaling task (2x) predicts a 2x output for a larger query, capped at 30x30.
    demos = [Pair(np.zeros((2, 3), np.uint8), np.zeros((4, 6), np.uint8))]
    assert fmt.max_new_tokens(demos, np.zeros((5, 5), np.uint8)) == fmt.max_output_tokens(10, 10)
    assert fmt.max_new_tokens(demos, np.zeros((20, 20), np.uint8)) == 30 * 31 + 1


# -- parsing: failures are values, never exceptions -------------------------------------------------------------
@pytest.mark.parametrize("ids, reason", [
    ([D(1), D(2), ROW, D(3), ROW, EOS], "ragged"),
    ([D(1), I, D(2), ROW, EOS], "unexpected token"),
    ([D(1), O, ROW, EOS], "unexpected token"),
    ([D(1)] * 31 + [ROW, EOS], "exceeds 30"),
    ([D(1), ROW] * 31 + [EOS], "exceeds 30"),
    ([EOS], "no rows"),
    ([], "no rows"),
    ([D(1), D(2)], "not closed"),
    ([D(1), ROW, ROW, EOS], "empty row"),
    ([D(1), 999, ROW], "unexpected token"),
])
def test_parse_failures_say_why(fmt, ids, reason):
    parsed = fmt.parse(ids)
    assert parsed.grid is None and reason in parsed.error


def test_parse_stops_at_eos(fmt):
    assert fmt.parse([D(7), ROW, EOS, I, D(1)]).grid.tolist() == [[7]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-5, 40), max_size=80))
def test_parse_never_raises(fmt, ids):
    parsed = fmt.parse(ids)
    assert (parsed.grid is None) != (parsed.error == "")


# -- tokenizers the format must refuse ------------------------------------------------------------------------------
def wrap(model, pre_tokenizer=None):
    from tokenizers import Tokenizer, decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(model)
    if pre_tokenizer is not None:
        tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>" if "<unk>" in tok.get_vocab() else None,
                                   clean_up_tokenization_spaces=False)


SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
DIGITS = [str(d) for d in range(10)]


def test_multi_token_marker_is_refused(fmt):
    with pytest.raises(TokenizerError, match="input marker 'IN' is 2 tokens"):
        ArcFormat(build_tokenizer(), FormatSpec(input_marker="IN"))


def test_symbol_missing_from_vocabulary_is_refused_not_mapped_to_unk():
    from tokenizers import models

    vocab = {t: i for i, t in enumerate(SPECIALS + DIGITS + ["\n", "O"])}  # no "I"
    with pytest.raises(TokenizerError, match="input marker 'I' does not round-trip"):
        ArcFormat(wrap(models.WordLevel(vocab=vocab, unk_token="<unk>")))


def test_symbol_split_by_bpe_is_refused():
    """A BPE that knows "I" only as part of "IO" (and has no unk) drops a lone "I": zero tokens."""
    from tokenizers import models

    vocab = {t: i for i, t in enumerate(SPECIALS + DIGITS + ["\n", "O", "IO"])}
    with pytest.raises(TokenizerError, match="input marker 'I' is 0 tokens"):
        ArcFormat(wrap(models.BPE(vocab=vocab, merges=[])))


def test_tokenizer_that_merges_digits_is_harmless_at_the_id_level():
    """A BPE that merges "10" into one token still has single-token digits; encoding ids directly keeps the
    grid [[1, 0]] as two cells, where tokenizing the rendered text would have merged them."""
    from tokenizers import models

    vocab = {t: i for i, t in enumerate(SPECIALS + DIGITS + ["\n", "I", "O", "10"])}
    tok = wrap(models.BPE(vocab=vocab, merges=[("1", "0")], unk_token="<unk>"))
    f = ArcFormat(tok)
    assert tok.encode("10\n", add_special_tokens=False) == [vocab["10"], vocab["\n"]]
    assert f.grid_ids(grid([[1, 0]])) == [vocab["1"], vocab["0"], vocab["\n"]]


def test_colliding_or_missing_special_tokens_are_refused():
    from tokenizers import models

    vocab = {t: i for i, t in enumerate(SPECIALS + DIGITS + ["\n", "I", "O"])}
    tok = wrap(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    with pytest.raises(ValueError, match="distinct non-digit"):
        FormatSpec(input_marker="O")
    tok.eos_token = "O"
    with pytest.raises(TokenizerError, match="colliding"):
        ArcFormat(tok)
    tok.eos_token = None
    with pytest.raises(TokenizerError, match="no eos"):
        ArcFormat(tok)


# -- the grid grammar (constrained decoding) ------------------------------------------------------------------
def mutated_completions():
    """Completion token ids: well-formed grids, and grids with one token replaced, dropped or inserted."""
    sym = st.sampled_from([D(d) for d in range(10)] + [ROW, EOS])
    return st.tuples(grids(6), st.integers(0, 3), st.integers(0, 10_000), sym)


@settings(max_examples=300, deadline=None)
@given(mutated_completions(), st.integers(1, 6), st.integers(1, 6))
def test_grid_state_regex_and_parser_accept_the_same_completions(fmt, case, height, width):
    g, how, at, tok = case
    assert fmt.eos_id == EOS
    grammar_regex_parser_agree(fmt, mutated(fmt.completion_ids(g), how, at, tok), height, width)


def test_grid_state_forces_the_first_row_width_and_eos_at_the_height_bound(fmt):
    s = fmt.grid_start(2, 3)
    assert s.allowed() == [D(d) for d in range(10)]  # no empty row, no empty grid
    for t in (D(1), D(2)):
        s.push(t)
    assert ROW in s.allowed() and EOS not in s.allowed()
    s.push(ROW)
    assert set(s.allowed()) == {*(D(d) for d in range(10)), EOS}
    s.push(D(5))
    assert ROW not in s.allowed()  # rows keep the first row's width
    s.push(D(6))
    assert s.allowed() == [ROW]  # the row is full
    s.push(ROW)
    assert s.allowed() == [EOS]  # the height bound is reached
    with pytest.raises(ValueError, match="breaks the grid grammar"):
        s.push(D(0))
    s.push(EOS)
    assert s.done
