"""`DriverConformance`: the suite every driver runs, in the style of SQLAlchemy's dialect suite.

    class TestEchoConformance(DriverConformance):
        driver = "echo"                  # the config key / entry-point name
        driver_class = EchoDriver        # or leave None to load the installed entry point
        model = "echo-1"
        block_template = "base-url: {base_url}\\napi-keys: [{secret}]\\n"

        def make_upstream(self) -> FakeUpstream:
            return FakeEcho()

Each test starts the driver's fake upstream and keyrail (one block item per credential, all
serving `model` as `conformance-model`, `fill-first` so the first credential is tried first),
puts the fake into a standard scenario, and drives keyrail with the official `openai` package
(raw aiohttp where the wire matters). `test_every_dialect` also asks for the same answers as an
Anthropic Messages and an OpenAI Responses client, and checks each stream's event order. A
scenario the driver cannot support is skipped by naming it in `unsupported`, with the reason.
Every test fails if a secret reaches a log line.

Owns: what "a driver works with keyrail" means, test by test. Does not own: the fixtures
(plugin.py) or the fakes (upstream.py).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import openai
import orjson
import pytest
import pytest_asyncio
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessageParam,
)

from proxy.driver import Driver
from proxy.registry import Registry
from proxy.sse import SSEParser, event_data
from proxy.testing.grammar import check_messages, check_responses, sse_events
from proxy.testing.plugin import Keyrail, LogGuard, StartApp, StartKeyrail
from proxy.testing.upstream import TEXT, TOOL_CALLS, FakeUpstream

CLIENT_KEY = "kit-client-key"
MODEL_ALIAS = "conformance-model"
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
TOOLS = [
    {"type": "function", "function": {"name": c["name"], "parameters": {"type": "object"}}}
    for c in TOOL_CALLS
]
#: A client that leaves must cancel the upstream request within this many seconds.
CANCEL_WITHIN = 0.1


@dataclass
class Bench:
    """One test's fake upstream, keyrail, and the secret of each credential, in order."""

    upstream: FakeUpstream
    keyrail: Keyrail
    secrets: list[str]

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.keyrail.v1, api_key=CLIENT_KEY, max_retries=0)

    def used(self) -> list[int]:
        """Which credential (by index) each upstream request used."""
        return [self.secrets.index(s) for s in self.upstream.secrets_seen()]

    async def chat(self, **kwargs: Any) -> ChatCompletion:
        """A non-streamed chat completion through keyrail (`kwargs`: e.g. `tools`)."""
        async with self.client() as client:
            reply: ChatCompletion = await client.chat.completions.create(
                model=MODEL_ALIAS, messages=HI, **kwargs
            )
            return reply

    async def stream_chunks(self, **kwargs: Any) -> list[ChatCompletionChunk]:
        """A streamed chat completion through keyrail, every chunk the SDK parsed."""
        async with self.client() as client:
            stream: openai.AsyncStream[ChatCompletionChunk] = await client.chat.completions.create(
                model=MODEL_ALIAS, messages=HI, stream=True, **kwargs
            )
            return [chunk async for chunk in stream]

    async def raw_stream(self) -> tuple[int, list[bytes]]:
        """A streamed request without the SDK: the status and the data of every event."""
        body = {"model": MODEL_ALIAS, "messages": HI, "stream": True}
        parser = SSEParser()
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.keyrail.v1 + "/chat/completions", json=body, headers=headers) as r,
        ):
            events = [*parser.feed(await r.read()), parser.flush()]
            return r.status, [d for e in events if e and (d := event_data(e)) is not None]

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        """A raw POST to keyrail (`path` below /v1): the status and the whole body."""
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.keyrail.v1 + path, json=body, headers=headers) as r,
        ):
            return r.status, await r.read()

    async def metrics(self) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.keyrail.v1 + "/metrics/providers") as r,
        ):
            data: dict[str, Any] = await r.json()
            return data


StartBench = Callable[..., Awaitable[Bench]]
Calls = list[tuple[str, str, Any]]
_MESSAGES_BODY: dict[str, Any] = {
    "model": MODEL_ALIAS,
    "max_tokens": 200,
    "messages": [{"role": "user", "content": "hi"}],
    "tools": [{"name": c["name"], "input_schema": {"type": "object"}} for c in TOOL_CALLS],
}
_RESPONSES_BODY: dict[str, Any] = {
    "model": MODEL_ALIAS,
    "input": "hi",
    "tools": [
        {"type": "function", "name": c["name"], "parameters": {"type": "object"}}
        for c in TOOL_CALLS
    ],
}


def _messages_answer(raw: bytes, stream: bool) -> tuple[str, Calls]:
    """The text and tool calls of a Messages answer; a stream is checked against the grammar."""
    if not stream:
        content = orjson.loads(raw)["content"]
    else:
        events = sse_events(raw)
        check_messages(events)
        content = []
        for name, data in events:
            if name == "content_block_start":
                content.append({**data["content_block"], "json": ""})
            elif name == "content_block_delta":
                delta = data["delta"]
                if delta["type"] == "text_delta":
                    content[-1]["text"] += delta["text"]
                elif delta["type"] == "input_json_delta":
                    content[-1]["json"] += delta["partial_json"]
        for block in content:
            if block["type"] == "tool_use":
                block["input"] = json.loads(block["json"] or "{}")
    text = "".join(b["text"] for b in content if b["type"] == "text")
    return text, [(b["id"], b["name"], b["input"]) for b in content if b["type"] == "tool_use"]


def _responses_answer(raw: bytes, stream: bool) -> tuple[str, Calls]:
    """The text and function calls of a Responses answer (a stream is checked likewise)."""
    if not stream:
        output = orjson.loads(raw)["output"]
    else:
        events = sse_events(raw)
        check_responses(events)
        output = events[-1][1]["response"]["output"]
    text = "".join(
        c["text"] for item in output if item["type"] == "message" for c in item["content"]
    )
    calls = [
        (i["call_id"], i["name"], json.loads(i["arguments"]))
        for i in output
        if i["type"] == "function_call"
    ]
    return text, calls


class DriverConformance:
    """Subclass as `Test<Something>` to run the suite against a driver."""

    pytestmark = pytest.mark.asyncio  # the suite runs in pytest-asyncio's strict mode too

    #: the config key of the driver's blocks (its entry-point name)
    driver: ClassVar[str]
    #: registered with `Registry.discover().with_classes`; None: the installed entry point
    driver_class: ClassVar[type[Driver] | None] = None
    #: the upstream model name each block lists
    model: ClassVar[str]
    #: one block item's YAML (without `name` and `models`), a `str.format` template of
    #: {name}, {base_url} and {secret} (so literal braces are doubled: `{{api-key: {secret}}}`)
    block_template: ClassVar[str] = ""
    #: scenario name → why this driver cannot support it; its tests are skipped
    unsupported: ClassVar[Mapping[str, str]] = {}

    def make_upstream(self) -> FakeUpstream:
        """A fresh fake upstream for one test."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_upstream()")

    def block_yaml(
        self, upstream: FakeUpstream, *, name: str, base_url: str, secret: str, tmp_path: Path
    ) -> str:
        """One block item (override to write a token file under `tmp_path`, say)."""
        return self.block_template.format(name=name, base_url=base_url, secret=secret)

    def config_yaml(
        self, upstream: FakeUpstream, base_url: str, secrets: list[str], tmp_path: Path
    ) -> str:
        """The whole config: one block item per credential, all serving `model`."""
        lines = [f"api-keys: [{CLIENT_KEY}]", "routing: {strategy: fill-first}", f"{self.driver}:"]
        models = f"models: [{{name: {self.model}, alias: {MODEL_ALIAS}}}]"
        for i, secret in enumerate(secrets):
            name = f"conformance-{i}"
            item = self.block_yaml(
                upstream, name=name, base_url=base_url, secret=secret, tmp_path=tmp_path
            )
            for j, line in enumerate([f"name: {name}", models, *item.strip("\n").splitlines()]):
                lines.append(("  - " if j == 0 else "    ") + line)
        return "\n".join(lines) + "\n"

    def need(self, scenario: str) -> None:
        if scenario in self.unsupported:
            pytest.skip(f"{self.driver} does not support {scenario}: {self.unsupported[scenario]}")

    @pytest_asyncio.fixture
    async def bench(
        self,
        start_upstream_app: StartApp,
        start_keyrail: StartKeyrail,
        no_secret_logged: LogGuard,
        tmp_path: Path,
    ) -> AsyncIterator[StartBench]:
        """`await bench(credentials=1)`: the fake and keyrail, started."""

        upstreams: list[FakeUpstream] = []

        async def start(credentials: int = 1) -> Bench:
            upstream = self.make_upstream()
            upstreams.append(upstream)
            base_url = await upstream.start(start_upstream_app)
            secrets = [upstream.issue_secret(i) for i in range(credentials)]
            no_secret_logged.add(*upstream.issued)
            registry = Registry.discover()
            if self.driver_class is not None:
                registry = registry.with_classes({self.driver: self.driver_class})
            yaml_text = self.config_yaml(upstream, base_url, secrets, tmp_path)
            return Bench(upstream, await start_keyrail(yaml_text, registry), secrets)

        yield start
        for upstream in upstreams:
            await upstream.close()

    # -- answers -----------------------------------------------------------------------------

    async def test_text(self, bench: StartBench) -> None:
        self.need("text")
        b = await bench()
        b.upstream.set_scenario("text")
        reply = await b.chat()
        assert reply.choices[0].message.content == TEXT
        assert reply.choices[0].finish_reason == "stop"
        chunks = await b.stream_chunks()
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
        assert all(c.object == "chat.completion.chunk" for c in chunks)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        status, events = await b.raw_stream()
        assert status == 200 and events[-1] == b"[DONE]"

    async def test_tool_calls(self, bench: StartBench) -> None:
        self.need("tool_calls")
        b = await bench()
        b.upstream.set_scenario("tool_calls")
        expected = [(c["id"], c["name"], json.loads(c["arguments"])) for c in TOOL_CALLS]
        reply = await b.chat(tools=TOOLS)
        calls = reply.choices[0].message.tool_calls or []
        dumped = [c.model_dump() for c in calls]
        got = [
            (d["id"], d["function"]["name"], json.loads(d["function"]["arguments"])) for d in dumped
        ]
        assert got == expected
        assert reply.choices[0].finish_reason == "tool_calls"
        merged: dict[int, dict[str, str]] = {}
        finish = None
        for chunk in await b.stream_chunks(tools=TOOLS):
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for frag in choice.delta.tool_calls or []:
                    fn = frag.function
                    if frag.index not in merged:  # the first fragment names the call
                        assert frag.id and fn and fn.name, f"first fragment {frag} lacks id/name"
                        merged[frag.index] = {"id": frag.id, "name": fn.name, "arguments": ""}
                    else:
                        assert frag.id in (None, merged[frag.index]["id"]), frag
                    merged[frag.index]["arguments"] += (fn.arguments or "") if fn else ""
        got = [(m["id"], m["name"], json.loads(m["arguments"])) for _, m in sorted(merged.items())]
        assert got == expected
        assert finish == "tool_calls"

    async def test_every_dialect(self, bench: StartBench) -> None:
        """The driver's answers reach Anthropic Messages and OpenAI Responses clients too,
        streamed and not, each stream in its dialect's exact event order."""
        self.need("text")
        self.need("tool_calls")
        b = await bench()
        calls = [(c["id"], c["name"], json.loads(c["arguments"])) for c in TOOL_CALLS]
        for scenario, text, expected in (("text", TEXT, []), ("tool_calls", None, calls)):
            b.upstream.set_scenario(scenario)
            for stream in (False, True):
                status, raw = await b.post("/messages", {**_MESSAGES_BODY, "stream": stream})
                assert status == 200, raw[:300]
                got_text, got_calls = _messages_answer(raw, stream)
                assert got_calls == expected, f"messages {scenario} stream={stream}"
                assert text is None or got_text == text
                status, raw = await b.post("/responses", {**_RESPONSES_BODY, "stream": stream})
                assert status == 200, raw[:300]
                got_text, got_calls = _responses_answer(raw, stream)
                assert got_calls == expected, f"responses {scenario} stream={stream}"
                assert text is None or got_text == text

    async def test_usage(self, bench: StartBench) -> None:
        self.need("usage")
        b = await bench()
        b.upstream.set_scenario("usage", prompt_tokens=123, completion_tokens=45)
        reply = await b.chat()
        assert reply.usage is not None
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (123, 45)
        assert reply.usage.total_tokens == 168
        # streamed: the usage chunk only for a client that asked for it, but counted always
        chunks = await b.stream_chunks()
        assert all(c.usage is None for c in chunks), "usage sent to a client that did not ask"
        chunks = await b.stream_chunks(stream_options={"include_usage": True})
        last = chunks[-1]
        assert last.choices == [] and last.usage is not None
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (123, 45)
        counted = (await b.metrics())["conformance-0"]
        assert (counted["prompt_tokens"], counted["completion_tokens"]) == (3 * 123, 3 * 45)

    # -- failures before the first byte -----------------------------------------------------

    async def test_rate_limited_moves_to_the_next_credential(self, bench: StartBench) -> None:
        self.need("rate_limited")
        await self._first_fails_then_skipped(bench, "rate_limited", "must cool for its hint")

    async def test_rate_limited_alone_answers_429_with_retry_after(self, bench: StartBench) -> None:
        self.need("rate_limited")
        b = await bench()
        # a hint beyond max-retry-interval (30 s): keyrail answers at once instead of waiting
        b.upstream.set_scenario("rate_limited", retry_after=60)
        for _ in range(2):  # the upstream's 429, then keyrail's own while it cools
            with pytest.raises(openai.RateLimitError) as caught:
                await b.chat()
            retry_after = caught.value.response.headers.get("Retry-After", "")
            assert re.fullmatch(r"\d+", retry_after), f"Retry-After {retry_after!r}"
            assert 55 <= int(retry_after) <= 60, "the upstream's hint (60 s) is passed on"
            self._error_body(b, caught.value.response.content)
        assert b.used() == [0]

    async def test_unauthorized_credential_is_not_used_again(self, bench: StartBench) -> None:
        self.need("unauthorized")
        b = await self._first_fails_then_skipped(bench, "unauthorized", "must be disabled")
        b.upstream.set_scenario("unauthorized")
        with pytest.raises(openai.APIStatusError) as caught:
            await b.chat()
        assert caught.value.status_code in (401, 402, 403)
        self._error_body(b, caught.value.response.content)
        assert b.used() == [0, 1, 1, 1]

    async def test_server_error_moves_to_the_next_credential(self, bench: StartBench) -> None:
        self.need("server_error")
        b = await self._first_fails_then_skipped(bench, "server_error", "must cool down")
        b.upstream.set_scenario("server_error")
        with pytest.raises(openai.APIStatusError) as caught:
            await b.chat()
        assert caught.value.status_code >= 500
        self._error_body(b, caught.value.response.content)

    async def test_bad_request_goes_straight_back(self, bench: StartBench) -> None:
        self.need("bad_request")
        b = await bench(credentials=2)
        b.upstream.set_scenario("bad_request")
        with pytest.raises(openai.BadRequestError) as caught:
            await b.chat()
        self._error_body(b, caught.value.response.content)
        assert b.used() == [0], "another credential would get the same answer"
        b.upstream.set_scenario("text")
        assert (await b.chat()).choices[0].message.content == TEXT
        assert b.used() == [0, 0], "a bad request must not cool the credential"

    # -- failures after the first byte ------------------------------------------------------

    async def test_break_mid_stream_ends_with_an_error_event(self, bench: StartBench) -> None:
        self.need("break_mid_stream")
        b = await bench(credentials=2)
        b.upstream.set_scenario("break_mid_stream")
        status, events = await b.raw_stream()
        assert status == 200
        assert b"[DONE]" not in events, "a broken stream must not look finished"
        self._error_body(b, events[-1])
        assert b.used() == [0], "a stream that started is never replayed"

    @pytest.mark.parametrize("after_first_piece", [False, True], ids=["before", "mid_stream"])
    async def test_client_leaving_cancels_the_upstream(
        self, bench: StartBench, after_first_piece: bool
    ) -> None:
        self.need("silent")
        b = await bench()
        b.upstream.set_scenario("silent", after_first_piece=after_first_piece)
        body = {"model": MODEL_ALIAS, "messages": HI, "stream": True}
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        async with aiohttp.ClientSession() as session:
            post = asyncio.create_task(
                session.post(b.keyrail.v1 + "/chat/completions", json=body, headers=headers)
            )
            await asyncio.wait_for(b.upstream.started.wait(), 5)
            if after_first_piece:
                response = await asyncio.wait_for(post, 5)
                assert response.status == 200
                assert await asyncio.wait_for(response.content.readany(), 5)
                response.close()  # the client leaves while the upstream is silent
            else:
                post.cancel()  # the client leaves before keyrail answered at all
            loop = asyncio.get_running_loop()
            left = loop.time()
            await asyncio.wait_for(b.upstream.cancelled.wait(), 2)
            assert loop.time() - left < CANCEL_WITHIN, "the upstream request outlived its client"

    @staticmethod
    async def _first_fails_then_skipped(bench: StartBench, scenario: str, why: str) -> Bench:
        """Two credentials, the first in `scenario`: both requests are served by the second,
        the first request after trying the first credential, the next without trying it."""
        b = await bench(credentials=2)
        b.upstream.set_scenario("text")
        b.upstream.set_scenario(scenario, secret=b.secrets[0])
        assert (await b.chat()).choices[0].message.content == TEXT
        assert (await b.chat()).choices[0].message.content == TEXT
        assert b.used() == [0, 1, 1], f"a credential answered with {scenario} {why}"
        return b

    @staticmethod
    def _error_body(b: Bench, body: bytes) -> None:
        """An OpenAI error object (`{"error": {"message", "type", ...}}`), secret-free."""
        error = orjson.loads(body).get("error")
        assert isinstance(error, dict), f"not an OpenAI error body: {body[:200]!r}"
        assert isinstance(error.get("message"), str) and isinstance(error.get("type"), str)
        leaked = [s for s in b.upstream.issued if s.encode() in body]
        assert not leaked, "a credential's secret reached the client"
