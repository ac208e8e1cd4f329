"""The fault battery against a real `keyrail serve` process. The fast tier runs in `make test`;
`make test-long` runs the long one (`-m long`). Both print their figures at the end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.battery import run


def _check(found: dict[str, object]) -> None:
    value = {name: v for name, (v, _note) in found.items()}  # type: ignore[misc]
    assert value["client-visible failures where a spare credential existed"] == 0
    assert value["replays after the first byte"] == 0
    assert value["upstream connections left open 1 s after a client disconnect"] == 0
    assert value["5xx on fuzzed input"] == 0
    assert value["tracebacks in keyrail's log"] == 0
    assert value["secrets found in any output"] == 0
    assert value["peak RSS after the gzip bombs (MiB)"] < 150  # type: ignore[operator]
    assert value["64 MiB event: keyrail CPU-seconds"] < 0.5  # type: ignore[operator]
    assert value["64 MiB event: the stream's last event"] == "limit error"
    assert value["management: correct key accepted mid-flood after (s)"] < 5  # type: ignore[operator]


async def test_battery_fast(tmp_path: Path) -> None:
    _check(await run.run(run.FAST, tmp_path))


@pytest.mark.long
async def test_battery_long(tmp_path: Path) -> None:
    _check(await run.run(run.LONG, tmp_path))
