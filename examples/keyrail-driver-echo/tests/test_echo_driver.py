"""keyrail-driver-echo passes keyrail's conformance suite, maps requests, and is installed."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import openai
import orjson
import pytest
from fake_echo import FakeEcho
from keyrail_driver_echo import EchoDriver

from proxy.registry import Registry
from proxy.testing import DriverConformance, FakeUpstream


class TestEchoConformance(DriverConformance):
    driver = "echo"
    driver_class = EchoDriver  # tested as it is in the source tree, installed or not
    model = "echo-1"
    block_template = "base-url: {base_url}\napi-keys: [{secret}]\n"

    def make_upstream(self) -> FakeUpstream:
        return FakeEcho()

    # The suite's `bench` fixture serves this driver's own tests too.
    @pytest.mark.parametrize(("how", "why"), [("fault", "overloaded"), ("no_end", "end line")])
    async def test_a_fault_line_or_a_missing_end_line_breaks_the_stream(self, bench, how, why):
        b = await bench()
        assert isinstance(b.upstream, FakeEcho)
        b.upstream.break_with = how
        b.upstream.set_scenario("break_mid_stream")
        status, events = await b.raw_stream()
        assert status == 200 and b"[DONE]" not in events
        assert why in orjson.loads(events[-1])["error"]["message"]  # the client learns why
        assert b.secrets[0].encode() not in events[-1]  # but not the key the fault quoted


async def test_chat_messages_become_echo_lines(start_upstream_app, start_keyrail):
    fake = FakeEcho()
    url = await start_upstream_app(fake.app)
    key = fake.issue_secret(0)
    registry = Registry.discover().with_classes({"echo": EchoDriver})
    kr = await start_keyrail(
        f"echo:\n  - base-url: {url}\n    api-keys: [{key}]\n    models: [{{name: echo-1}}]\n",
        registry,
    )
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]  # fmt: skip
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="unused", max_retries=0) as client:
        await client.chat.completions.create(model="echo-1", messages=messages, tools=tools)
    assert fake.seen[-1].body == {
        "voice": "echo-1",
        "lines": [
            {"who": "system", "say": "Be brief."},
            {"who": "user", "say": "Weather?"},
            {
                "who": "bot",
                "say": "",
                "calls": [{"ref": "c1", "tool": "get_weather", "args": "{}"}],
            },
            {"who": "tool", "say": "sunny", "ref": "c1"},
        ],
        "tools": ["get_weather"],
    }


def test_keyrail_plugins_lists_the_installed_driver():
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "plugins"], capture_output=True, text=True, check=True
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("echo "))
    assert line.split() == [
        "echo",
        "keyrail_driver_echo:EchoDriver",
        "keyrail-driver-echo",
        version("keyrail-driver-echo"),
    ]
