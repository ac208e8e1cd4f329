"""The keyrail test kit: prove a driver works with keyrail, before and after it is installed.

Owns nothing itself; it gathers what a plugin's tests import:

- `DriverConformance` (conformance.py): subclass it to run the standard suite on a driver;
- `FakeUpstream`, `ScriptedUpstream`, `Scenario`, `watch` and the standard content
  (upstream.py): the fake upstream the suite puts into scenarios;
- the pytest fixtures (plugin.py), enabled with `pytest_plugins = ["proxy.testing.plugin"]`
  (not registered automatically: installing keyrail adds nothing to other test sessions).

Needs the `test` extra: `pip install "keyrail[test]"`.
"""

import pytest

# The suite's asserts explain themselves only if pytest rewrites them, before they are imported.
pytest.register_assert_rewrite(
    "proxy.testing.conformance",
    "proxy.testing.limit_store",
    "proxy.testing.plugin",
    "proxy.testing.upstream",
)

from proxy.testing.conformance import DriverConformance  # noqa: E402
from proxy.testing.plugin import Keyrail, LogGuard  # noqa: E402
from proxy.testing.upstream import (  # noqa: E402
    SCENARIOS,
    TEXT,
    TEXT_PIECES,
    TOOL_CALLS,
    FakeUpstream,
    Scenario,
    ScriptedUpstream,
    Seen,
    watch,
)

__all__ = [
    "SCENARIOS",
    "TEXT",
    "TEXT_PIECES",
    "TOOL_CALLS",
    "DriverConformance",
    "FakeUpstream",
    "Keyrail",
    "LogGuard",
    "Scenario",
    "ScriptedUpstream",
    "Seen",
    "watch",
]
