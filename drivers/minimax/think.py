"""Reasoning hidden in MiniMax's `content`: `<think>…</think>` and an orphan `</think>`.

Owns: splitting content text into (reasoning, answer) as it streams, holding back no more
than what could still turn out to be a tag or a mirror, and the same split for a whole
message. Does not own: where the text comes from or goes (chunks.py).

MiniMax is always asked for `reasoning_split: true`, so reasoning normally arrives apart, in
`reasoning_details`, and content is the answer. The shapes seen anyway (protocols/minimax.md
M2), and what is done with them:
- content opening with `<think>`: the text up to `</think>` is reasoning; dropped when the
  same reasoning also arrived in `reasoning_details` (mirrored), else delivered as reasoning;
- content opening with an orphan `</think>` (the opening tag went elsewhere): the tag is
  dropped;
- content that repeats the reasoning already received, then `</think>`: a mirror, dropped;
- a whole message (not streamed) with an orphan `</think>` anywhere: the text before it is
  reasoning.
Whitespace after `</think>` is dropped (the answer follows a blank line).
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"
#: Most reasoning text remembered to recognise a mirror of it in content.
MIRROR_LIMIT = 256 * 1024

_START, _THINK, _MIRROR, _AFTER_TAG, _ANSWER = range(5)


class ThinkSplitter:
    """Feed content deltas (and note reasoning received apart); get (reasoning, answer) text."""

    __slots__ = ("_checked", "_held", "_reasoning", "_reasoning_len", "_state", "_whole")

    def __init__(self) -> None:
        self._state = _START
        self._held = ""  # text not yet known to be reasoning, mirror or answer
        self._reasoning: list[str] = []  # reasoning received apart (bounded), for mirrors
        self._reasoning_len = 0
        self._whole = ""  # that reasoning joined, leading whitespace stripped (cached)
        # In _THINK/_MIRROR, how much of the held text is already known: to hold no `</think>`
        # (or to repeat the reasoning), so each delta is checked once, not the whole again.
        self._checked = 0

    @property
    def saw_reasoning(self) -> bool:
        return self._reasoning_len > 0

    def reasoning(self, text: str) -> None:
        """Reasoning that arrived apart (`reasoning_details`): a later mirror of it is dropped."""
        if text and self._reasoning_len < MIRROR_LIMIT:
            self._reasoning.append(text)
            self._reasoning_len += len(text)

    def content(self, text: str) -> tuple[str, str]:
        """One content delta → (reasoning, answer) ready to send now."""
        if self._state == _ANSWER:
            return "", text
        self._held += text
        return self._advance()

    def end(self) -> tuple[str, str]:
        """The stream ended: whatever is held is delivered for what it most likely is."""
        held, self._held = self._held, ""
        if self._state == _THINK:
            return ("" if self.saw_reasoning else held), ""
        if self._state == _AFTER_TAG:
            return "", ""  # the blank line after `</think>`
        # _MIRROR without its `</think>`: an answer that happens to begin like the reasoning
        # would otherwise be lost; a mirror is only known by the closing tag.
        return "", held

    def _advance(self) -> tuple[str, str]:
        reasoning, answer = "", ""
        while True:
            held = self._held
            if self._state == _START:
                lead = held.lstrip()
                if not lead or OPEN.startswith(lead) or CLOSE.startswith(lead):
                    return reasoning, answer  # could still be a tag
                if lead.startswith(OPEN):
                    self._state, self._held = _THINK, lead[len(OPEN) :]
                    continue
                if lead.startswith(CLOSE):
                    self._to_answer(lead[len(CLOSE) :])
                    continue
                if self.saw_reasoning and self._mirrors(lead):
                    self._state, self._held = _MIRROR, lead
                    continue
                self._state = _ANSWER
                self._held = ""
                return reasoning, answer + held
            if self._state in (_THINK, _MIRROR):
                end = held.find(CLOSE, max(0, self._checked - len(CLOSE) + 1))
                if end >= 0:
                    if self._state == _THINK and not self.saw_reasoning:
                        reasoning += held[:end]
                    self._to_answer(held[end + len(CLOSE) :])
                    continue
                if self._state == _MIRROR and not self._mirrors(held):
                    self._state = _ANSWER  # it was the answer after all
                    self._held = ""
                    return reasoning, answer + held
                keep = _partial_tag(held)
                if self._state == _THINK:  # delivered, or dropped as a mirror: not kept
                    if not self.saw_reasoning:
                        reasoning += held[: len(held) - keep]
                    self._held = held[len(held) - keep :]
                self._checked = len(self._held) - keep  # a partial tag is looked at again
                return reasoning, answer
            # _AFTER_TAG: drop the blank line after `</think>`, then the answer passes through
            lead = held.lstrip()
            self._held = ""
            if lead:
                self._state = _ANSWER
            return reasoning, answer + lead

    def _to_answer(self, rest: str) -> None:
        self._state, self._held, self._checked = _AFTER_TAG, rest, 0

    def _mirrors(self, text: str) -> bool:
        """True while `text` (minus a partial `</think>` at its end) repeats the reasoning.
        Only what was not compared before is compared (`_checked`)."""
        if len(self._reasoning) > 1 or not self._whole:
            joined = "".join(self._reasoning)
            self._reasoning = [joined]
            self._whole = joined.lstrip()
        probe = text[: len(text) - _partial_tag(text)]
        done = min(self._checked, len(probe))
        return self._whole.startswith(probe[done:], done)


def _partial_tag(text: str) -> int:
    """How many characters at the end of `text` could be the start of `</think>`."""
    for n in range(min(len(CLOSE) - 1, len(text)), 0, -1):
        if CLOSE.startswith(text[-n:]):
            return n
    return 0


def split_message(content: str, reasoning_received: bool) -> tuple[str, str]:
    """A whole message's content → (reasoning, answer). Reasoning is "" when it was mirrored."""
    start = content.lstrip()
    if start.startswith(OPEN):
        start = start[len(OPEN) :]
        end = start.find(CLOSE)
        if end < 0:
            return ("" if reasoning_received else start), ""
        thought, answer = start[:end], start[end + len(CLOSE) :]
    else:
        end = content.find(CLOSE)
        if end < 0 or OPEN in content[:end]:
            return "", content
        thought, answer = content[:end], content[end + len(CLOSE) :]
    return ("" if reasoning_received else thought), answer.lstrip()
