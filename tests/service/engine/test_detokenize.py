from __future__ import annotations

from service.engine.detokenize import REPLACEMENT, StreamDecoder

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


# ---- the windowed decode streams exactly what decoding everything each token would -------------
TEXT = "def f(x):\n    return x  # naïve 🙂 日本語 — ok\n" * 20


def full_decode_deltas(decode, ids, stop):  # type: ignore[no-untyped-def]
    """The definition: decode the whole output every token, hold back U+FFFD and stop prefixes."""
    deltas, emitted, text = [], 0, ""
    for n in range(1, len(ids) + 1):
        text = decode(ids[:n])
        hits = [i for s in stop if (i := text.find(s)) != -1]
        if hits:
            deltas.append(text[emitted : min(hits)])
            return deltas, True
        safe = len(text.rstrip(REPLACEMENT)) if text.endswith(REPLACEMENT) else len(text)
        held = max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        safe = min(safe, len(text) - held)
        deltas.append(text[emitted:safe] if safe > emitted else "")
        emitted = max(emitted, safe)
    deltas.append(text[emitted:])
    return deltas, False


def tokenizers_under_test():  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from export.tokenizer import train_tokenizer

    byte_level = train_tokenizer([TEXT], vocab_size=300)  # Kiln's own; GPT-2, Qwen and Llama 3 alike
    spm = Tokenizer(models.BPE(unk_token="<unk>"))  # SentencePiece-style: "▁" for spaces, first one stripped
    spm.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    spm.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    spm.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>"]))
    return {"byte-level": byte_level, "sentencepiece": spm}


def test_windowed_deltas_equal_decoding_the_whole_output_every_token() -> None:
    """Random ids (split UTF-8 characters, special tokens that decode to nothing, stop strings that
    span tokens) through real tokenizers: every delta equals the full-decode definition's."""
    import numpy as np

    rng = np.random.default_rng(0)
    for name, tok in tokenizers_under_test().items():

        def decode(ids, tok=tok):  # type: ignore[no-untyped-def]
            return tok.decode(list(ids), skip_special_tokens=True)

        vocab = tok.get_vocab_size()
        for trial in range(60):
            ids = rng.integers(0, vocab, int(rng.integers(1, 80))).tolist()
            stop = [decode(ids[i : i + 2])[-3:]] if trial % 3 == 0 and len(ids) > 4 and (i := len(ids) // 2) else []
            stop = [s for s in stop if s]
            d = StreamDecoder(decode, stop)
            got = []
            for t in ids:
                got.append(d.push(t))
                if d.stopped:
                    break
            if not d.stopped:
                got.append(d.flush())
            want, stopped = full_decode_deltas(decode, ids, stop)
            assert (got, d.stopped) == (want, stopped), (name, trial, ids, stop)


def test_a_decoder_whose_text_changes_across_the_window_edge_falls_back_to_decoding_everything() -> None:
    """A decoder that rewrites text spanning tokens ("lo wor" -> "LO WOR") is not stable under
    appending: the window's text no longer starts with what it decoded to before."""

    def rewriting(ids):  # type: ignore[no-untyped-def]
        return decode(ids).replace("lo wor", "LO WOR")

    d = StreamDecoder(rewriting)
    deltas = [d.push(i) for i in [0, 1, 2, 3]] + [d.flush()]
    assert d.text == "HelLO WORld" == rewriting([0, 1, 2, 3])
    assert deltas == ["Hel", "lo", " WOR", "ld", ""]  # what was emitted stays emitted
