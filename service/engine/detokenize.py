"""Turns a growing list of token ids into safe text deltas.

Two things make streaming text harder than decoding once at the end:
- a byte-level token can end in the middle of a UTF-8 character, so text that ends in
  U+FFFD is held back until the character completes;
- a stop string may be split across tokens, so any tail that could still grow into a stop
  string is held back until it either completes (generation stops, the stop string and
  everything after it are dropped) or cannot match any more.

Each token decodes only a short window, not the whole output (which made every token cost time
proportional to the output's length: ~0.5 ms a token 2,000 tokens in): the ids since the last
settled point plus one token of context before it, diffed against the same window without the
new ids (how TGI and vLLM stream). The context token keeps decoders that treat a leading token
specially (SentencePiece's leading space) consistent between the two decodes; a decoder whose
text is not stable under appending falls back to decoding everything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"


class StreamDecoder:
    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = [s for s in stop if s]
        self._ids: list[int] = []
        self._text = ""
        self._emitted = 0  # characters of _text already handed out
        self.stopped = False
        # The window: ids[_context:] decode to _head + whatever the ids after _settled add.
        self._context = 0  # where the window starts (one settled token before _settled)
        self._settled = 0  # ids before this are final text: _settled_text
        self._settled_text = ""
        self._head = ""  # decode(ids[_context:_settled])

    @property
    def text(self) -> str:
        """Everything emitted so far (final text once finished)."""
        return self._text[: self._emitted]

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now safe to emit (may be empty)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        window = self._decode(self._ids[self._context :])
        if window.startswith(self._head):
            self._text = self._settled_text + window[len(self._head) :]
        else:  # not stable under appending: decode it all
            self._text = self._decode(self._ids)
        if len(self._text) > len(self._settled_text) and not self._text.endswith(REPLACEMENT):
            self._settle()
        hit = self._find_stop()
        if hit is not None:
            self.stopped = True
            self._text = self._text[:hit]
            return self._release(len(self._text))
        safe = len(self._text)
        if self._text.endswith(REPLACEMENT):
            safe = len(self._text.rstrip(REPLACEMENT))
        safe = min(safe, len(self._text) - self._stop_prefix_len())
        return self._release(safe)

    def _settle(self) -> None:
        """The text so far ends in a whole character: it is final, and the window moves up."""
        self._context, self._settled = self._settled, len(self._ids)
        self._settled_text = self._text
        self._head = self._decode(self._ids[self._context : self._settled])

    def flush(self) -> str:
        """At the end of generation nothing more can complete: release what was held."""
        if self.stopped:
            return ""
        return self._release(len(self._text))

    def _release(self, upto: int) -> str:
        if upto <= self._emitted:
            return ""
        delta = self._text[self._emitted : upto]
        self._emitted = upto
        return delta

    def _find_stop(self) -> int | None:
        if not self._stop:
            return None
        longest = max(len(s) for s in self._stop)
        start = max(0, self._emitted - longest)
        hits = [i for s in self._stop if (i := self._text.find(s, start)) != -1]
        return min(hits) if hits else None

    def _stop_prefix_len(self) -> int:
        """Length of the longest text suffix that is a proper prefix of a stop string."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(self._text)), best, -1):
                if self._text.endswith(s[:n]):
                    best = n
                    break
        return best
