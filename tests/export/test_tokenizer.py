from export.tokenizer import SPECIAL_TOKENS, train_tokenizer
from tests.conftest import TINY_TEXT


def test_specials_have_fixed_ids_and_any_utf8_round_trips() -> None:
    tok = train_tokenizer(TINY_TEXT * 3, vocab_size=300)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    # Text the tokenizer never saw, in scripts and emoji outside its training data.
    for text in [
        "Ωμέγα ∑ ∫ ≠",
        "日本語のテキスト",
        "🦀🐍 zwj: 👩‍👩‍👧",
        "tabs\tand\r\nCRLF",
        "\x00\x7f",
        "  leading spaces",
    ]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == text
        assert 0 not in ids  # never falls back to a pad/unknown token


def test_training_is_deterministic() -> None:
    a = train_tokenizer(TINY_TEXT * 3, vocab_size=300)
    b = train_tokenizer(TINY_TEXT * 3, vocab_size=300)
    assert a.get_vocab() == b.get_vocab()
