"""The inline `<thinking>` splitter, cut at every position (kiro.md §3.3: tags split across
frames, quoted tags ignored, the newline after a tag dropped)."""

from __future__ import annotations

import itertools

import pytest

from drivers.kiro.thinking import REASONING, TEXT, Splitter

CASES = [
    ("<thinking>\nplan it</thinking>\n\nanswer", "plan it", "answer"),
    ("  <thinking>a `</thinking>` b</thinking>c", "a `</thinking>` b", "c"),
    ("no thinking here <thinking>x</thinking>", "", "no thinking here <thinking>x</thinking>"),
    ("<thinking>never closed", "never closed", ""),
    ("<thin", "", "<thin"),
    ("", "", ""),
]


def _run(pieces: list[str]) -> tuple[str, str, int]:
    splitter = Splitter()
    out = [p for piece in pieces for p in splitter.feed(piece)] + splitter.end()
    reasoning = "".join(t for kind, t in out if kind == REASONING)
    text = "".join(t for kind, t in out if kind == TEXT)
    return reasoning, text, sum(1 for kind, _ in out if kind == REASONING)


@pytest.mark.parametrize(("whole", "reasoning", "text"), CASES)
def test_every_two_and_three_way_cut(whole: str, reasoning: str, text: str) -> None:
    assert _run([whole])[:2] == (reasoning, text)
    for i, j in itertools.combinations_with_replacement(range(len(whole) + 1), 2):
        assert _run([whole[:i], whole[i:j], whole[j:]])[:2] == (reasoning, text), (i, j)
    assert _run(list(whole))[:2] == (reasoning, text)  # one character at a time


def test_reasoning_is_given_out_before_the_closing_tag() -> None:
    splitter = Splitter()
    assert splitter.feed("<thinking>\nfirst thoughts") == [(REASONING, "first thoughts")]
    assert splitter.feed(" and more</thi") == [(REASONING, " and more")]
    assert splitter.feed("nking>\nDone") == [(TEXT, "Done")]
