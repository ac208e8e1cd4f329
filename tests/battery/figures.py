"""The battery's figures: each test records what it measured; the run prints them at the end
(tests/battery/conftest.py) and, with KEYRAIL_BATTERY_FIGURES=path, writes them as JSON."""

from __future__ import annotations

from typing import Any

#: name -> (value, unit or note); filled by the tests, printed by the terminal summary
FIGURES: dict[str, tuple[Any, str]] = {}


def record(name: str, value: Any, note: str = "") -> None:
    FIGURES[name] = (value, note)


def add(name: str, value: float, note: str = "") -> None:
    old = FIGURES.get(name, (0, note))[0]
    FIGURES[name] = (old + value, note)


def worst(name: str, value: float, note: str = "") -> None:
    old = FIGURES.get(name, (None, note))[0]
    FIGURES[name] = (value if old is None else max(old, value), note)
