"""Kiro's inline thinking: `<thinking>…</thinking>` at the start of the answer's text.

With thinking on, Kiro streams the reasoning as ordinary text wrapped in tags, cut anywhere
across events (kiro.md §3.3). `Splitter` turns that text stream into ("reasoning", piece) and
("text", piece) pairs as it arrives: it holds back only what could still be the start of a
tag, so reasoning reaches the client as it is written. A closing tag quoted in backticks is
content, not the end; the newlines right after the opening and closing tags are dropped.
Does not own: what the pieces become on the wire (response.py), turning thinking on
(request.py).
"""

from __future__ import annotations

OPEN, CLOSE = "<thinking>", "</thinking>"
REASONING, TEXT = "reasoning", "text"
Piece = tuple[str, str]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class Splitter:
    """Feed text deltas; get (kind, piece) pairs. `end()` gives what was held back."""

    def __init__(self) -> None:
        self._state = "start"  # start → thinking → after → text, or start → text
        self._held = ""
        self._previous = ""  # the last reasoning character given out (backtick check)
        self._drop_newline = False

    def feed(self, text: str) -> list[Piece]:
        out: list[Piece] = []
        self._held += text
        while self._held:
            before = (self._state, len(self._held))
            if self._state == "start":
                self._start()
                if self._state == "start":
                    break  # still maybe "<think"
            elif self._state == "thinking":
                self._thinking(out)
                if self._state == "thinking":
                    break
            elif self._state == "after":
                self._held = self._held.lstrip("\n")
                if self._held:
                    self._state = "text"
            else:
                out.append((TEXT, self._held))
                self._held = ""
            if (self._state, len(self._held)) == before:
                break
        return out

    def end(self) -> list[Piece]:
        held, self._held = self._held, ""
        if not held:
            return []
        return [(REASONING if self._state == "thinking" else TEXT, held)]

    def _start(self) -> None:
        stripped = self._held.lstrip()
        if stripped.startswith(OPEN):
            self._held = stripped[len(OPEN) :]
            self._state, self._drop_newline = "thinking", True
        elif not (OPEN.startswith(stripped)):  # an answer without thinking
            self._state = "text"

    def _thinking(self, out: list[Piece]) -> None:
        if self._drop_newline:
            if not self._held:
                return
            self._held = self._held.removeprefix("\n")
            self._drop_newline = False
        search = 0
        while True:
            at = self._held.find(CLOSE, search)
            if at < 0:
                break
            before = self._held[at - 1] if at else self._previous
            if before != "`":  # not a quoted tag
                self._give(out, self._held[:at])
                self._held = self._held[at + len(CLOSE) :]
                self._state = "after"
                return
            search = at + len(CLOSE)
        keep = _partial_suffix(self._held, CLOSE)
        ready = self._held[: len(self._held) - keep]
        self._give(out, ready)
        self._held = self._held[len(ready) :]

    def _give(self, out: list[Piece], text: str) -> None:
        if text:
            out.append((REASONING, text))
            self._previous = text[-1]
