"""Generated token ids -> the text pieces a stream shows, in one place (`slimtune generate` and
`slimtune serve` both stream through it).

A piece is the new text since the last one: the ids so far are decoded whole and the new suffix
taken, so a character split over two byte-level tokens comes out whole; while the decoded text
ends in U+FFFD (half a character) the piece waits for the rest. What the pieces join to is what
decoding all the ids at once gives.

Stop strings (`StopAt`): the text is cut before the first one, and text that could still be the
start of one is held back until the next piece settles it, so a stream never shows part of a stop
string that a later piece completes.
"""

from __future__ import annotations

from typing import Iterable, Iterator


def text_pieces(tokenizer, tokens: Iterable[int]) -> Iterator[str]:
    """The new text after each token of `tokens` (special tokens left out); nothing for a token
    that ends inside a character. The pieces join to `tokenizer.decode(all ids)`."""
    ids, shown = [], ""
    text = ""
    for tok in tokens:
        ids.append(tok)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # half a character: wait for the rest
            continue
        if len(text) > len(shown):
            yield text[len(shown):]
            shown = text
    if len(text) > len(shown):  # the ids ended inside a character: what decoding them gives
        yield text[len(shown):]


class StopAt:
    """Feed pieces in, get back what may be shown; `stopped` once a stop string has appeared."""

    def __init__(self, stops: Iterable[str]):
        self.stops = [s for s in stops if s]
        self.text, self.sent, self.stopped = "", 0, False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.text += piece
        # no stop string starts before `sent`: text that could begin one is never sent
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            return self._send(min(hits))
        return self._send(len(self.text) - self._open_prefix())

    def flush(self) -> str:
        """The rest, once generation has ended without a stop string."""
        return "" if self.stopped else self._send(len(self.text))

    def _open_prefix(self) -> int:
        """Length of the longest end of the text that begins some stop string."""
        longest = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:k]):
                    longest = k
                    break
        return longest

    def _send(self, end: int) -> str:
        piece, self.sent = self.text[self.sent:end], max(self.sent, end)
        return piece
