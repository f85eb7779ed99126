from __future__ import annotations

from service.engine.detokenize import StreamDecoder

# A toy vocabulary of byte strings: tokens may split words, stop strings and UTF-8 characters.
VOCAB = {0: b"Hel", 1: b"lo", 2: b" wor", 3: b"ld", 4: b"\n\n", 5: b"\xf0\x9f", 6: b"\x99\x82", 7: b"##", 8: b"#"}


def decode(ids) -> str:  # type: ignore[no-untyped-def]
    return b"".join(VOCAB[i] for i in ids).decode("utf-8", errors="replace")


def run(ids, stop=()):  # type: ignore[no-untyped-def]
    d = StreamDecoder(decode, stop)
    deltas = [d.push(i) for i in ids]
    deltas.append(d.flush())
    return d, deltas


def test_plain_text_streams_token_by_token() -> None:
    d, deltas = run([0, 1, 2, 3])
    assert deltas == ["Hel", "lo", " wor", "ld", ""]
    assert d.text == "Hello world"


def test_incomplete_utf8_is_held_until_the_character_completes() -> None:
    d, deltas = run([0, 5, 6, 1])
    assert deltas == ["Hel", "", "🙂", "lo", ""]
    assert all("\ufffd" not in x for x in deltas)


def test_stop_string_split_across_tokens() -> None:
    # "lo wor" spans tokens 1 and 2; the text ends before it and nothing of it leaks out.
    d, deltas = run([0, 1, 2, 3], stop=["lo wor"])
    assert d.stopped
    assert "".join(deltas) == "Hel"
    assert d.text == "Hel"


def test_held_prefix_is_released_when_it_cannot_match() -> None:
    d, deltas = run([7, 0, 7, 8], stop=["###"])
    # "##" might start "###": held; "Hel" proves it cannot; the final "###" stops.
    assert deltas[0] == ""
    assert d.stopped and d.text == "##Hel"


def test_flush_releases_a_held_tail_at_the_end() -> None:
    d, deltas = run([0, 7], stop=["###"])
    assert deltas == ["Hel", "", "##"]
    assert not d.stopped
