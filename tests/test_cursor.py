"""The cursor driver through keyrail with the `openai` SDK, against the fake Cursor of
tests/fake_cursor.py over both transports: HTTP/2 `Run` (h2c) and HTTP/1.1 `RunSSE` +
`BidiAppend`. Every turn of the fake asks for the system prompt, the tool list and a built-in
tool first, and records a problem if the driver answers wrongly."""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from drivers.cursor import auth
from proxy.tokens import format_expiry
from tests.fake_cursor import Env, block, new_key, running

Start = Callable[..., Awaitable[Any]]
HI = [{"role": "user", "content": "hi"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with running() as started:
        yield started


async def client_for(start_keyrail: Start, blocks: str, top: str = "") -> openai.AsyncOpenAI:
    kr = await start_keyrail(f"api-keys: [client-key]\n{top}cursor:\n{blocks}")
    return openai.AsyncOpenAI(base_url=kr.v1, api_key="client-key", max_retries=0)


TRANSPORTS = pytest.mark.parametrize("transport", ["h2", "sse"])


@TRANSPORTS
async def test_streamed_text_and_discovered_models(
    env: Env, start_keyrail: Start, transport: str
) -> None:
    client = await client_for(start_keyrail, block(env, transport, [new_key(env.fake)]))
    models = sorted(m.id for m in (await client.models.list()).data)
    assert models == sorted(env.fake.models)  # GetUsableModels at start-up
    stream = await client.chat.completions.create(
        model="gpt-5.5",
        messages=[{"role": "system", "content": "Be brief."}, *HI],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from Cursor."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 7  # the token deltas, summed
    run = env.fake.runs[-1]
    assert (run.transport, run.model, run.text) == (transport, "gpt-5.5", "hi")
    assert run.replies[1] == "Be brief."  # the system prompt came back by its blob id
    await client.close()


@TRANSPORTS
async def test_not_streamed_and_reasoning(env: Env, start_keyrail: Start, transport: str) -> None:
    client = await client_for(start_keyrail, block(env, transport, [new_key(env.fake)]))
    answer = await client.chat.completions.create(
        model="claude-4.5-sonnet", messages=[{"role": "user", "content": "think first"}]
    )
    message = answer.choices[0].message
    assert message.content == "Thought."
    assert message.model_extra and message.model_extra["reasoning_content"] == "Let me think."
    stream = await client.chat.completions.create(
        model="claude-4.5-sonnet", messages=[{"role": "user", "content": "think"}], stream=True
    )
    deltas = [c.choices[0].delta async for c in stream if c.choices]
    reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert reasoning == "Let me think."
    assert "".join(d.content or "" for d in deltas) == "Thought."
    await client.close()


@TRANSPORTS
async def test_tool_call_round_trip_on_the_same_stream(
    env: Env, start_keyrail: Start, transport: str
) -> None:
    client = await client_for(start_keyrail, block(env, transport, [new_key(env.fake)]))
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    stream = await client.chat.completions.create(
        model="gpt-5.5", messages=messages, tools=[WEATHER_TOOL], stream=True
    )
    chunks = [c async for c in stream if c.choices]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    pieces = [t for c in chunks for t in c.choices[0].delta.tool_calls or ()]
    assert {t.index for t in pieces} == {0}
    call_id = pieces[0].id
    assert call_id and pieces[0].function and pieces[0].function.name == "get_weather"
    arguments = "".join((t.function.arguments or "") if t.function else "" for t in pieces)
    assert orjson.loads(arguments) == {"city": "Paris"}
    run = env.fake.runs[-1]
    assert run.tools == ["get_weather"]
    assert run.tool_schemas == [WEATHER_TOOL["function"]["parameters"]]  # type: ignore[index]
    messages += [
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "sunny"},
    ]
    answer = await client.chat.completions.create(
        model="gpt-5.5", messages=messages, tools=[WEATHER_TOOL]
    )
    assert answer.choices[0].message.content == "Result: sunny."
    assert len(env.fake.runs) == 1  # the parked stream went on: no second Run
    await client.close()


async def test_tool_result_without_a_parked_turn_flattens_the_conversation(
    env: Env, start_keyrail: Start
) -> None:
    client = await client_for(start_keyrail, block(env, "h2", [new_key(env.fake)]))
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "first"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_x", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_x", "content": "r" * 9000},
        {"role": "user", "content": "hello again"},
    ]
    answer = await client.chat.completions.create(model="gpt-5.5", messages=messages)
    assert answer.choices[0].message.content == "Hello from Cursor."
    text = env.fake.runs[-1].text
    assert text.startswith("USER: first\n\nASSISTANT: [called f({}) call_id: call_x]\n\n")
    assert "TOOL_RESULT (call_id: call_x): " + "r" * 8000 + "\n\n" in text
    assert "r" * 8001 not in text
    assert text.endswith(
        "The above is the previous conversation context including tool call results.\n"
        "Continue your response based on this context.\n\nCurrent request: hello again"
    )
    await client.close()


@TRANSPORTS
async def test_heartbeat_only_pause_longer_than_idle_timeout(
    env: Env, start_keyrail: Start, transport: str
) -> None:
    env.fake.pause_seconds = 1.0
    top = "timeouts:\n  idle-seconds: 0.4\n"
    client = await client_for(start_keyrail, block(env, transport, [new_key(env.fake)]), top)
    stream = await client.chat.completions.create(
        model="gpt-5.5", messages=[{"role": "user", "content": "pause"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "before after"
    assert env.fake.heartbeats > 0  # the driver's own heartbeats (every 0.1 s here) arrived
    await client.close()


@TRANSPORTS
async def test_resource_exhausted_moves_to_the_second_credential(
    env: Env, start_keyrail: Start, transport: str
) -> None:
    first, second = new_key(env.fake, "a"), new_key(env.fake, "b")
    env.fake.exhausted_keys.add(first)
    top = "max-retry-interval: 1\n"  # the fake's hint (7 s) is longer: no waiting for it
    client = await client_for(start_keyrail, block(env, transport, [first, second]), top)
    for _ in range(2):
        answer = await client.chat.completions.create(
            model="gpt-5.5", messages=[{"role": "user", "content": "quota"}]
        )
        assert answer.choices[0].message.content == "Hello from Cursor."
    served = [env.fake.valid[r.bearer] for r in env.fake.runs]
    assert served.count(second) == 2 and served.count(first) == 1  # cooled down after one
    env.fake.exhausted_keys.add(second)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(
            model="gpt-5.5", messages=[{"role": "user", "content": "quota"}]
        )
    assert int(caught.value.response.headers["retry-after"]) >= 1
    await client.close()


async def test_expired_token_is_exchanged_once_for_20_concurrent_requests(
    env: Env, start_keyrail: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_key(env.fake)
    client = await client_for(start_keyrail, block(env, "h2", [key]))
    await client.chat.completions.create(model="gpt-5.5", messages=HI)
    assert env.fake.exchanges == 1
    old = env.fake.runs[-1].bearer
    later = time.time() + 3600  # the hour-long token is now expired
    monkeypatch.setattr(auth.key_tokens(), "clock", lambda: later)
    env.fake.exchange_gate = asyncio.Event()  # hold the exchange until all 20 wait on it
    calls = [
        asyncio.ensure_future(client.chat.completions.create(model="gpt-5.5", messages=HI))
        for _ in range(20)
    ]
    for _ in range(200):
        if env.fake.exchange_arrivals == 2:
            break
        await asyncio.sleep(0.01)  # bounded wait for the first exchange to arrive
    env.fake.exchange_gate.set()
    answers = await asyncio.gather(*calls)
    assert all(a.choices[0].message.content == "Hello from Cursor." for a in answers)
    assert env.fake.exchanges == 2
    bearers = {r.bearer for r in env.fake.runs[1:]}
    assert len(bearers) == 1 and old not in bearers
    assert env.fake.h2_connections == 1  # one connection per credential, many streams
    await client.close()


async def test_unauthenticated_exchanges_again_once(env: Env, start_keyrail: Start) -> None:
    client = await client_for(start_keyrail, block(env, "h2", [new_key(env.fake)]))
    await client.chat.completions.create(model="gpt-5.5", messages=HI)
    env.fake.reject_once.add(env.fake.runs[-1].bearer)
    answer = await client.chat.completions.create(model="gpt-5.5", messages=HI)
    assert answer.choices[0].message.content == "Hello from Cursor."
    assert env.fake.exchanges == 2
    await client.close()


@TRANSPORTS
async def test_client_disconnect_resets_the_stream(
    env: Env, start_keyrail: Start, transport: str
) -> None:
    client = await client_for(start_keyrail, block(env, transport, [new_key(env.fake)]))
    stream = await client.chat.completions.create(
        model="gpt-5.5", messages=[{"role": "user", "content": "hang"}], stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    await stream.close()  # the client leaves mid-turn
    async with asyncio.timeout(5):
        await env.fake.reset_seen.wait()
    assert env.fake.resets == 1
    await client.close()


async def test_transport_and_agent_host_from_server_config(env: Env, start_keyrail: Start) -> None:
    env.fake.http1 = True  # GetServerConfig field 7: HTTP/1.1 please
    env.fake.agent_url = env.http + "/agent"
    blocks = (
        f"  - api-key: {new_key(env.fake)}\n    base-url: {env.http}\n    heartbeat-seconds: 0.1\n"
    )
    client = await client_for(start_keyrail, blocks)
    answer = await client.chat.completions.create(model="gpt-5.5", messages=HI)
    assert answer.choices[0].message.content == "Hello from Cursor."
    assert env.fake.runs[-1].transport == "sse"
    await client.close()


async def test_flow_control_small_server_window(env: Env, start_keyrail: Start) -> None:
    env.fake.h2_window = 1024  # the run request (a 64 KiB system prompt) must wait for windows
    client = await client_for(start_keyrail, block(env, "h2", [new_key(env.fake)]))
    system = "s" * 65536
    answer = await client.chat.completions.create(
        model="gpt-5.5",
        messages=[{"role": "system", "content": system}, *HI],
        tools=[WEATHER_TOOL],
    )
    assert answer.choices[0].message.content == "Hello from Cursor."
    assert env.fake.runs[-1].replies[1] == system
    await client.close()


async def test_reasoning_effort_maps_to_a_suffixed_id_only_where_it_exists(
    env: Env, start_keyrail: Start
) -> None:
    client = await client_for(start_keyrail, block(env, "h2", [new_key(env.fake)]))
    for model, effort, sent in [
        ("gpt-5.5", "high", "gpt-5.5-high"),
        ("gpt-5.5", "low", "gpt-5.5"),  # no gpt-5.5-low
        ("claude-4.5-sonnet", "high", "claude-4.5-sonnet"),
    ]:
        await client.chat.completions.create(
            model=model,
            messages=HI,
            reasoning_effort=effort,  # type: ignore[arg-type]
        )
        assert env.fake.runs[-1].model == sent
    await client.close()


async def test_outdated_client_names_the_setting(
    env: Env, start_keyrail: Start, log_text: Callable[[], str]
) -> None:
    env.fake.client_version_floor = "cli-2099"
    client = await client_for(start_keyrail, block(env, "h2", [new_key(env.fake)]))
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="gpt-5.5", messages=HI)
    assert "client-version" in caught.value.message
    assert "client-version" in log_text()
    extra = "    client-version: cli-2099.01.01-abcdef0\n"
    client2 = await client_for(start_keyrail, block(env, "h2", [new_key(env.fake)], extra))
    answer = await client2.chat.completions.create(model="gpt-5.5", messages=HI)
    assert answer.choices[0].message.content == "Hello from Cursor."
    await client.close()
    await client2.close()


async def test_token_file_login_refreshed_and_written_back(
    env: Env, start_keyrail: Start, tmp_path: Path
) -> None:
    access, refresh = env.fake.issue_login()
    path = tmp_path / "cursor.json"
    doc = {
        "type": "cursor",
        "access_token": access,
        "refresh_token": refresh,
        "expires_at": format_expiry(time.time() + 60),  # inside the refresh lead
    }
    path.write_bytes(orjson.dumps(doc))
    path.chmod(0o600)
    blocks = (
        f"  - token-file: {path}\n    base-url: {env.http}\n    agent-url: {env.h2}\n"
        "    heartbeat-seconds: 0.1\n"
    )
    client = await client_for(start_keyrail, blocks)
    answer = await client.chat.completions.create(model="gpt-5.5", messages=HI)
    assert answer.choices[0].message.content == "Hello from Cursor."
    saved = orjson.loads(path.read_bytes())
    assert saved["access_token"] != access and saved["refresh_token"] != refresh
    assert env.fake.runs[-1].bearer == saved["access_token"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    await client.close()


async def test_bad_config_is_refused(start_keyrail: Start) -> None:
    from proxy.errors import ProxyError

    with pytest.raises(ProxyError, match="crsr_"):
        await start_keyrail("cursor:\n  - api-key: sk-not-cursor\n")
    with pytest.raises(ProxyError, match="needs"):
        await start_keyrail("cursor:\n  - transport: h2\n")


async def test_keyrail_login_cursor_writes_a_0600_token_file_that_serves(
    env: Env, start_keyrail: Start, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from proxy.__main__ import main

    path = tmp_path / "new-dir" / "cursor.json"
    login_url = "https://login.example/loginDeepControl"
    argv = ["login", "cursor", "--token-file", str(path), "--auth-url", env.http,
            "--login-url", login_url, "--poll-seconds", "0.01"]  # fmt: skip
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    url = next(line.strip() for line in out.splitlines() if "loginDeepControl" in line)
    assert "mode=login&redirectTarget=cli" in url and "challenge=" in url and "uuid=" in url
    assert env.fake.polls == 3  # 404, 404, then the tokens
    saved = orjson.loads(path.read_bytes())
    assert saved["type"] == "cursor" and saved["refresh_token"] in env.fake.refresh_tokens
    assert saved["sub"] == "auth0|user_fake"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert saved["access_token"] not in out and saved["refresh_token"] not in out
    blocks = f"  - token-file: {path}\n    base-url: {env.http}\n    agent-url: {env.h2}\n"
    client = await client_for(start_keyrail, blocks)
    answer = await client.chat.completions.create(model="gpt-5.5", messages=HI)
    assert answer.choices[0].message.content == "Hello from Cursor."
    assert env.fake.runs[-1].bearer == saved["access_token"]
    await client.close()


async def test_login_failure_is_a_clear_message(
    env: Env, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from proxy.__main__ import main

    argv = ["login", "cursor", "--token-file", str(tmp_path / "t.json"),
            "--auth-url", "http://127.0.0.1:1"]  # nothing listens there  # fmt: skip
    assert await asyncio.to_thread(main, argv) == 1
    assert "login failed" in capsys.readouterr().out
    assert not (tmp_path / "t.json").exists()


async def test_h2_settings_images_and_default_system_prompt(env: Env, start_keyrail: Start) -> None:
    client = await client_for(start_keyrail, block(env, "h2", [new_key(env.fake)]))
    pixel = (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5E"
        "rkJggg=="
    )
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}},
    ]
    answer = await client.chat.completions.create(
        model="gpt-5.5", messages=[{"role": "user", "content": content}]
    )
    assert answer.choices[0].message.content == "Hello from Cursor."
    run = env.fake.runs[-1]
    assert run.images == 1 and run.text == "what is this?"
    assert run.replies[1] == "You are a helpful assistant."  # the default system prompt
    assert len(run.conversation_id) == 36 and run.conversation_id.count("-") == 4
    # the settings Cursor's CLI sends: 4 MiB stream window, 100 streams, +3 MiB connection
    assert env.fake.h2_client_settings[0x4] == 4 * 1024 * 1024
    assert env.fake.h2_client_settings[0x3] == 100
    assert env.fake.h2_connection_window_bonus >= 3 * 1024 * 1024
    await client.close()


@pytest.mark.parametrize("how", ["rst_before_data", "goaway_before_data"])
async def test_stream_reset_or_goaway_before_data_is_a_502(
    env: Env, start_keyrail: Start, how: str
) -> None:
    setattr(env.fake, how, True)
    env.fake.models_enveloped = True  # discovery still works: the envelope is stripped
    client = await client_for(start_keyrail, block(env, "h2", [new_key(env.fake)]))
    assert {m.id for m in (await client.models.list()).data} == set(env.fake.models)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="gpt-5.5", messages=HI)
    assert caught.value.status_code == 502
    await client.close()


async def test_model_list_failure_serves_the_fallback_ids(env: Env, start_keyrail: Start) -> None:
    env.fake.models = []
    env.fake.valid.clear()
    blocks = block(env, "h2", [new_key(env.fake)])
    env.fake.api_keys.clear()  # the exchange fails: no token, no model list
    client = await client_for(start_keyrail, blocks)
    models = {m.id for m in (await client.models.list()).data}
    assert {"composer-2", "claude-4-sonnet", "gpt-4o", "default"} <= models
    await client.close()


async def test_responses_dialect_text_and_function_call_round_trip(
    env: Env, start_keyrail: Start
) -> None:
    client = await client_for(start_keyrail, block(env, "h2", [new_key(env.fake)]))
    reply = await client.responses.create(model="gpt-5.5", input="hi")
    assert reply.output_text == "Hello from Cursor."
    tool = {"type": "function", "name": "get_weather", "description": "The weather",
            "parameters": WEATHER_TOOL["function"]["parameters"]}  # type: ignore[index]  # fmt: skip
    first = await client.responses.create(
        model="gpt-5.5",
        input="weather in Paris?",
        tools=[tool],  # type: ignore[list-item]
    )
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and orjson.loads(call.arguments) == {"city": "Paris"}
    second = await client.responses.create(
        model="gpt-5.5",
        tools=[tool],  # type: ignore[list-item]
        input=[
            {"role": "user", "content": "weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
    )
    assert second.output_text == "Result: sunny."
    assert len(env.fake.runs) == 2  # the second call went on on the parked stream
    await client.close()
