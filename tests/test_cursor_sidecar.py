"""Sidecar mode (`cursor-api-url` + `auth-token`): a local cursor-api is an OpenAI-compatible
upstream, so the cursor driver runs the very conformance suite openai-compatibility runs,
against the same fake (the sidecar's `/v1` is added to its URL)."""

from __future__ import annotations

from drivers.cursor import CursorDriver
from tests import test_conformance_openai as openai_compatibility


class TestCursorSidecarConformance(openai_compatibility.TestOpenAICompatibleConformance):
    driver = "cursor"
    driver_class = CursorDriver
    block_template = "cursor-api-url: {base_url}\nauth-token: {secret}\n"
