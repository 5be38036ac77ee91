"""One answer's text as its tokens arrive: stop strings, and what is safe to stream so far.

    text = AnswerText(model.decode, stop=["\\n\\n"], incremental=True)
    delta, stopped = text.push(token_id)       # delta: new text to send now ("" while held back)
    rest = text.finish()                        # whatever was held back, when generation ends
    text.text                                   # the whole answer (== what was streamed, joined)

The answer is the decoded tokens stripped of surrounding whitespace, as ``mllm chat`` prints it, and cut
before the first stop string. Streaming holds back text that could still change: a trailing incomplete
UTF-8 character (decoded as U+FFFD), a tail that may be the start of a stop string, and trailing whitespace
(it is dropped if the answer ends there). So the streamed pieces always join to exactly ``text``.
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple


class AnswerText:
    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = (), incremental: bool = False):
        self.decode = decode
        self.stop: List[str] = [s for s in stop if s]
        # without streaming or stop strings nothing is needed before the end: decode once in finish()
        self.incremental = incremental or bool(self.stop)
        self.ids: List[int] = []
        self.sent = ""  # streamed so far
        self.stopped = False
        self._final = None

    def push(self, token_id: int) -> Tuple[str, bool]:
        """Add one generated token; returns (text to stream now, whether a stop string was reached)."""
        self.ids.append(int(token_id))
        if not self.incremental:
            return "", False
        full = self.decode(self.ids).lstrip()
        cut = self._first_stop(full)
        if cut is not None:
            self.stopped = True
            self._final = full[:cut].rstrip()
            return self._advance(self._final), True
        if full.endswith("\ufffd"):  # a multi-byte character whose remaining bytes are still to come
            full = full.rstrip("\ufffd")
        hold = self._stop_prefix_len(full)
        return self._advance(full[:len(full) - hold].rstrip()), False

    def finish(self) -> str:
        """Generation ended: the text not streamed yet."""
        if self._final is None:
            self._final = self.decode(self.ids).strip()
        return self._advance(self._final, final=True)

    @property
    def text(self) -> str:
        return self._final if self._final is not None else self.decode(self.ids).strip()

    def _advance(self, visible: str, final: bool = False) -> str:
        if visible.startswith(self.sent):
            delta, self.sent = visible[len(self.sent):], visible
            return delta
        # the decoded text changed behind what was sent (a tokenizer clean-up rule); wait for it to settle
        if final:
            self._final = self.sent
        return ""

    def _first_stop(self, text: str):
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best
