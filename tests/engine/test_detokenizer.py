"""The incremental detokenizer: UTF-8-safe deltas, stop strings cut off, a bounded decoding window."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepseek.engine.detokenizer import IncrementalDetokenizer, first_stop, partial_stop_length, token_bytes
from deepseek.tokenizer import ASSISTANT, EOS, sample_corpus, train_byte_bpe

# ASCII, accented Latin, CJK, and emoji (4-byte UTF-8): byte-level BPE splits the multi-byte ones.
CHARS = st.one_of(
    st.characters(min_codepoint=32, max_codepoint=126),
    st.sampled_from("\n\téüßñ"),
    st.characters(min_codepoint=0x4E00, max_codepoint=0x4FFF),
    st.characters(min_codepoint=0x1F600, max_codepoint=0x1F64F),
)
TEXT = st.text(CHARS, max_size=60)
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def byte_level():
    return train_byte_bpe(sample_corpus(), 1024)


@pytest.fixture(scope="module", params=["token bytes", "decoded window"])
def tokenizer(request, byte_level):
    """Both ways of decoding: a plain byte-level decoder's token bytes, and (for any other decoder)
    a window of ids through `tokenizer.decode`, here with the same decoder wrapped in a Sequence."""
    if request.param == "token bytes":
        assert token_bytes(byte_level) is not None
        return byte_level
    from tokenizers import Tokenizer, decoders

    other = Tokenizer.from_str(byte_level.to_str())
    other.decoder = decoders.Sequence([decoders.ByteLevel()])
    assert token_bytes(other) is None
    return other


def stream(tokenizer, ids, **kwargs) -> tuple[list[str], str, IncrementalDetokenizer]:
    """(the delta of every push, the finish() flush, the detokenizer)."""
    detok = IncrementalDetokenizer(tokenizer, **kwargs)
    deltas = [detok.push(i) for i in ids]
    return deltas, detok.finish(), detok


def cut_at_first_stop(text: str, stop: list[str]) -> str:
    """The oracle: the text before the stop string that completes first (the longest on a tie)."""
    ends = [(text.find(s) + len(s), -len(s), text.find(s)) for s in stop if s in text]
    return text[:min(ends)[2]] if ends else text


@SETTINGS
@given(text=TEXT)
def test_deltas_and_flush_reassemble_the_full_decode(tokenizer, text):
    ids = tokenizer.encode(text).ids
    deltas, tail, _ = stream(tokenizer, ids)
    full = tokenizer.decode(ids, skip_special_tokens=False)
    assert "".join(deltas) + tail == full
    if "\ufffd" not in full:
        assert not any("\ufffd" in d for d in deltas)


@SETTINGS
@given(ids=st.lists(st.integers(0, 1023), max_size=40))
def test_arbitrary_token_ids_reassemble_even_when_bytes_are_invalid(tokenizer, ids):
    deltas, tail, _ = stream(tokenizer, ids)
    assert "".join(deltas) + tail == tokenizer.decode(ids, skip_special_tokens=False)


@SETTINGS
@given(data=st.data(), text=TEXT)
def test_stop_strings_cut_the_output_before_the_first_one(tokenizer, data, text):
    # Stops drawn from the text itself (so they occur) and at random (so some do not).
    pieces = st.tuples(st.integers(0, len(text)), st.integers(1, 4)).map(lambda a: text[a[0]:a[0] + a[1]])
    stop = data.draw(st.lists(st.one_of(pieces, st.text(CHARS, max_size=3)).filter(bool), min_size=1, max_size=3))
    ids = tokenizer.encode(text).ids
    deltas, tail, detok = stream(tokenizer, ids, stop=stop)
    full = tokenizer.decode(ids, skip_special_tokens=False)
    expected = cut_at_first_stop(full, stop)
    out = "".join(deltas) + tail
    assert out == expected
    assert not any(s in out for s in stop)
    assert detok.stopped == any(s in full for s in stop)
    if detok.stopped:
        assert tail == "" and detok.stop_string in full


def test_a_split_character_is_held_until_its_last_byte_arrives(tokenizer):
    ids = tokenizer.encode("a😀b").ids
    assert len(ids) > 3  # the emoji's four bytes span several tokens
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.push(i) for i in ids]
    assert deltas[0] == "a"
    assert all(d == "" for d in deltas[1:-2])
    assert "".join(deltas) == "a😀b"


def test_text_that_could_start_a_stop_string_is_held_then_released(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, stop=["END"])
    out = [detok.push(i) for i in tokenizer.encode("x E").ids]
    assert "".join(out) == "x "  # "E" may begin "END"
    out += [detok.push(i) for i in tokenizer.encode("X").ids]
    assert "".join(out) == "x EX" and not detok.stopped


def test_a_completed_stop_string_ends_the_stream(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, stop=["\n\n"])
    text = "".join(detok.push(i) for i in tokenizer.encode("def f():\n\n    return 1").ids)
    assert text == "def f():" and detok.stopped and detok.stop_string == "\n\n"
    assert detok.push(tokenizer.encode("more").ids[0]) == "" and detok.finish() == ""


def test_finish_flushes_a_held_stop_prefix(tokenizer):
    deltas, tail, detok = stream(tokenizer, tokenizer.encode("the end is EN").ids, stop=["END"])
    assert "".join(deltas) == "the end is " and tail == "EN" and not detok.stopped


def test_special_tokens_are_kept_or_skipped(tokenizer):
    ids = tokenizer.encode("hi").ids + [tokenizer.token_to_id(EOS)]
    assert "".join(stream(tokenizer, ids)[0]) + stream(tokenizer, ids)[1] == "hi" + EOS
    deltas, tail, _ = stream(tokenizer, ids, skip_special_tokens=True)
    assert "".join(deltas) + tail == "hi"


def test_prompt_ids_give_context_but_are_not_emitted(tokenizer):
    prompt = tokenizer.encode("User: hello").ids + [tokenizer.token_to_id(ASSISTANT)]
    deltas, tail, _ = stream(tokenizer, tokenizer.encode(" world 中文").ids, prompt_ids=prompt)
    assert "".join(deltas) + tail == " world 中文"


def test_the_decoding_window_stays_small_on_long_outputs(tokenizer):
    detok = IncrementalDetokenizer(tokenizer)
    for i in tokenizer.encode("print('hello')\n" * 200).ids:
        detok.push(i)
        if detok._utf8 is not None:    # token bytes: at most one unfinished character held, no ids
            assert detok._ids == [] and len(detok._utf8.getstate()[0]) <= 3
        else:
            assert len(detok._ids) <= 4  # only the last released token(s) and the pending ones


def test_token_bytes_are_what_the_tokenizer_decodes(byte_level):
    """Every id alone (special tokens kept, or skipped), and the bytes of a split character."""
    table, skipped = token_bytes(byte_level), token_bytes(byte_level, skip_special_tokens=True)
    for i in range(byte_level.get_vocab_size()):
        assert table[i].decode(errors="replace") == byte_level.decode([i], skip_special_tokens=False)
        assert skipped[i].decode(errors="replace") == byte_level.decode([i], skip_special_tokens=True)
    ids = byte_level.encode("😀").ids
    assert b"".join(table[i] for i in ids) == "😀".encode()


def test_stop_helpers():
    assert first_stop("abcd", ["abcd", "b"]) == (1, "b")  # "b" completes first, though it starts later
    assert first_stop("abcd", ["bc", "abc"]) == (0, "abc")  # same end: the longest wins
    assert first_stop("abcd", ["x"]) is None
    assert partial_stop_length("foo EN", ["END", "ENDING"]) == 2
    assert partial_stop_length("foo", ["bar"]) == 0


def test_empty_stop_strings_are_refused(tokenizer):
    with pytest.raises(ValueError, match="non-empty"):
        IncrementalDetokenizer(tokenizer, stop=[""])
