"""The test kit fails what it should: a broken driver, a leaked secret (run in a child pytest,
the way a plugin author's project runs the kit)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

BROKEN_DRIVER = """
from drivers.openai import OpenAICompatibleDriver
from proxy import RateLimited, UpstreamUnavailable
from tests import test_conformance_openai as suite


class ForgetsRateLimits(OpenAICompatibleDriver):
    async def send(self, call, credential):
        try:
            return await super().send(call, credential)
        except RateLimited as exc:  # the bug: a 429 treated as a server error
            raise UpstreamUnavailable(exc.message, status=503, provider=exc.provider) from None


class TestBroken(suite.TestOpenAICompatibleConformance):
    driver_class = ForgetsRateLimits
"""

LEAK = """
import logging


def test_logs_a_secret(no_secret_logged):
    no_secret_logged.add("hunter2-not-shaped-like-a-key")
    logging.getLogger("some.plugin").warning("retrying with hunter2-not-shaped-like-a-key")
"""


@pytest.fixture
def child(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest('pytest_plugins = ["proxy.testing.plugin"]')
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function")
    return pytester


def test_the_suite_names_what_a_broken_driver_gets_wrong(child: pytest.Pytester) -> None:
    child.makepyfile(test_broken=BROKEN_DRIVER)
    result = child.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=11, failed=1)
    result.stdout.fnmatch_lines(["FAILED*test_rate_limited_alone_answers_429_with_retry_after*"])


def test_a_logged_secret_fails_the_test(child: pytest.Pytester) -> None:
    child.makepyfile(test_leak=LEAK)
    result = child.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*secret in the logs*", "*retrying with <SECRET>*"])
