import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from charsdk import ModelError, Vocab
from charsdk.errors import InputError
from charsdk.vocab import StateSpec


def make_vocab(**kw):
    base = dict(chars=tuple(" abc."), maxlen=10, lowercase=True,
                states=(StateSpec("h0", "h0_out", 8), StateSpec("c0", "c0_out", 8)),
                onnx_sha256="0" * 64, default_seed_text="abc", training={"best_epoch": 3})
    return Vocab(**{**base, **kw})


def test_round_trip_through_json(tmp_path):
    vocab = make_vocab()
    vocab.save(tmp_path / "vocab.json")
    assert Vocab.load(tmp_path / "vocab.json") == vocab
    data = json.loads((tmp_path / "vocab.json").read_text())
    assert data["format_version"] == 2 and data["chars"] == list(" abc.")
    assert data["onnx"]["inputs"]["ids"] == ["batch", "T"] and data["onnx"]["no_char_id"] == 5
    assert data["onnx"]["precision"] == "int8"


def test_encode_decode():
    vocab = make_vocab()
    ids = vocab.encode("Abc. cab")  # upper case follows the model's lower-casing
    assert vocab.decode(ids) == "abc. cab"
    assert ids.dtype == np.int64 and list(ids) == [1, 2, 3, 4, 0, 3, 1, 2]


def test_unknown_characters_are_named():
    with pytest.raises(InputError, match=r"'x', 'z'"):
        make_vocab().encode("abzcx")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format_version": 99}, "format_version 99"),
        ({"format": "other"}, "not a charsdk model"),
        ({"chars": "abc"}, "'chars'"),
        ({"maxlen": 0}, "'maxlen'"),
        ({"format_version": 1}, "format_version 1; this charsdk reads versions 2 and 3: re-export"),
    ],
)
def test_invalid_vocab_is_refused(change, message):
    with pytest.raises(ModelError, match=message):
        Vocab.from_dict({**make_vocab().to_dict(), **change})


@pytest.mark.parametrize("name", ["../model.onnx", "/etc/passwd", "sub/model.onnx", ".."])
def test_onnx_file_cannot_point_outside_the_model_directory(name):
    data = make_vocab().to_dict()
    data["onnx"]["file"] = name
    with pytest.raises(ModelError, match="plain file name"):
        Vocab.from_dict(data)


def test_broken_json_is_a_model_error(tmp_path):
    (tmp_path / "vocab.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        Vocab.load(tmp_path / "vocab.json")


def test_unknown_characters_can_be_skipped():
    vocab = make_vocab()
    assert vocab.decode(vocab.encode("a-b\u2603c", on_unknown="skip")) == "abc"
    with pytest.raises(InputError, match="on_unknown"):
        vocab.encode("abc", on_unknown="ignore")


@given(st.text(alphabet=" abc.ABC"))
def test_encode_decode_round_trip(text):
    vocab = make_vocab()
    assert vocab.decode(vocab.encode(text)) == text.lower()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                       max_size=4),
    max_leaves=12,
)


@given(st.one_of(json_values, st.builds(lambda v, k: {**make_vocab().to_dict(), k: v}, json_values,
                                        st.sampled_from(["chars", "maxlen", "onnx", "default_seed_text",
                                                         "lowercase", "format_version"]))))
def test_the_loader_fed_arbitrary_json_accepts_or_raises_model_error(data):
    try:
        vocab = Vocab.from_dict(data)
    except ModelError:
        return
    assert vocab.size > 0 and vocab.maxlen > 0
