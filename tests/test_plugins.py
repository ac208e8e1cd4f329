"""The plugin seam: the public API is pinned, and drivers are found through entry points."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

import proxy
from proxy.driver import Call, Credential, Driver, Reply
from proxy.errors import DriverError
from proxy.registry import GROUP, Registry

#: Removing or renaming any of these breaks third-party drivers: bump proxy.API_VERSION.
PUBLIC_API = {
    "API_VERSION", "CHAT", "COMPLETIONS", "EMBEDDINGS", "RESPONSES", "ByteStream", "BytesStream",
    "Call", "Credential", "CredentialRejected", "Driver", "DriverError", "ModelEntry",
    "ProviderBlock", "ProviderDiscontinued", "ProxyError", "RateLimited", "Reply",
    "ResponseStream", "SSEParser",
    "StreamInterrupted", "UpstreamError", "UpstreamRejected", "UpstreamUnavailable",
    "__version__", "classify_upstream", "data_event", "describe_failure", "event_data",
    "read_error_body", "retry_after_seconds",
}  # fmt: skip


def test_public_api_is_pinned():
    assert set(proxy.__all__) >= PUBLIC_API
    for name in proxy.__all__:
        assert hasattr(proxy, name), name


class EchoDriver(Driver):
    async def send(self, call: Call, credential: Credential) -> Reply:
        raise NotImplementedError


class OldDriver(EchoDriver):
    api_version = "0"


def _ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=GROUP)


def test_builtin_driver_registers_like_a_plugin():
    registry = Registry.discover()
    assert "openai-compatibility" in registry.names()
    assert registry.get("openai-compatibility").__name__ == "OpenAICompatibleDriver"


def test_entry_point_loading_and_refusals():
    registry = Registry(
        {
            "echo": [_ep("echo", "tests.test_plugins:EchoDriver")],
            "old": [_ep("old", "tests.test_plugins:OldDriver")],
            "notadriver": [_ep("notadriver", "tests.test_plugins:PUBLIC_API")],
            "broken": [_ep("broken", "tests.no_such_module:X")],
            "twice": [_ep("twice", "a:A"), _ep("twice", "b:B")],
        }
    )
    assert registry.get("echo") is EchoDriver
    with pytest.raises(DriverError, match="written for driver API 0"):
        registry.get("old")
    with pytest.raises(DriverError, match=r"not a proxy\.Driver subclass"):
        registry.get("notadriver")
    with pytest.raises(DriverError, match="failed to load"):
        registry.get("broken")
    with pytest.raises(DriverError, match="several distributions"):
        registry.get("twice")
    with pytest.raises(DriverError, match="no driver named"):
        registry.get("missing")
    assert registry.options_for("missing") is None


async def test_a_driver_that_cannot_serve_an_endpoint_gets_a_clear_400(start_keyrail):
    import aiohttp

    registry = Registry.discover().with_classes({"echo": EchoDriver})
    kr = await start_keyrail("echo:\n  - models: [{name: m}]\n", registry=registry)
    async with (
        aiohttp.ClientSession() as s,
        s.post(kr.v1 + "/embeddings", json={"model": "m", "input": "x"}) as r,
    ):
        assert r.status == 400
        assert "does not support /v1/embeddings" in (await r.json())["error"]["message"]
