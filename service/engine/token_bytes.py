"""The bytes one token stands for, as OpenAI's logprobs report them (`bytes`).

Decoding a single token to text loses what a byte-level token means when it holds part of a
UTF-8 character (it decodes to U+FFFD). The vocabulary entry itself keeps the bytes: GPT-2
style byte-level BPE spells each byte as one printable character, SentencePiece writes a space
as U+2581 and a raw byte as `<0xNN>`.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from tokenizers import Tokenizer

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: printable character -> the byte it stands for."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


class TokenBytes:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
        kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", []) or []}
        self._byte_level = "ByteLevel" in kinds

    def __call__(self, token_id: int) -> list[int]:
        piece = self._tokenizer.id_to_token(token_id)
        if piece is None:
            return []
        if self._byte_level:
            table = _byte_level_decoder()
            if all(ch in table for ch in piece):
                return [table[ch] for ch in piece]
        byte = _BYTE_TOKEN.match(piece)
        if byte:
            return [int(byte[1], 16)]
        return list(piece.replace("\u2581", " ").encode("utf-8"))
