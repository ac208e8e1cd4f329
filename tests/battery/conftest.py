"""Prints the battery's figures after the run (and writes them as JSON when asked)."""

from __future__ import annotations

import json
import os
from typing import Any

from tests.battery.figures import FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("keyrail fault battery: figures")
    width = max(len(name) for name in FIGURES)
    for name, (value, note) in FIGURES.items():
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        terminalreporter.write_line(f"{name:<{width}}  {shown:>10}  {note}")
    path = os.environ.get("KEYRAIL_BATTERY_FIGURES")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({k: {"value": v, "note": n} for k, (v, n) in FIGURES.items()}, f, indent=2)
