"""Sticky sessions: a conversation stays on one credential, and still moves when it fails.

The conversation ids are those Claude Code and Codex CLI send (shared/protocols/captures:
the header and body fields are copied here as they were captured).
"""

from __future__ import annotations

from collections import Counter

import aiohttp
import openai
import orjson

from proxy.clients.affinity import Conversations, conversation_of
from proxy.config import DEFAULT_SESSION_SOURCES
from proxy.keys import CONVERSATIONS, SCHEDULER
from tests.fakes import FakeClock, Script

KEY = "client-key-affinity-0000000000"
MGMT = "management-secret-affinity-000"
CONFIG = """
api-keys: [{key}]
remote-management: {{secret-key: {mgmt}}}
routing: {{session-affinity: true}}
openai-compatibility:
  - name: pool
    base-url: {url}
    api-key-entries:
      - api-key: sticky-pool-key-a
      - api-key: sticky-pool-key-b
      - api-key: sticky-pool-key-c
      - api-key: sticky-pool-key-d
    models: [{{name: gpt-4o-mini, alias: fast}}]
"""
SYSTEM = {"role": "system", "content": "You are a careful assistant."}


def used_key(seen) -> str:
    return seen.headers["Authorization"].removeprefix("Bearer ")


async def ask(c: openai.AsyncOpenAI, turn: int, session: str | None = None) -> None:
    """One request of a conversation: the same system prompt and first user message, then a
    growing history (as an agent sends it)."""
    messages = [SYSTEM, {"role": "user", "content": "Fix the failing test."}]
    for i in range(turn):
        messages += [
            {"role": "assistant", "content": f"step {i}"},
            {"role": "user", "content": f"go on {i}"},
        ]
    headers = {"session-id": session} if session else None
    await c.chat.completions.create(model="fast", messages=messages, extra_headers=headers)


async def test_50_requests_of_one_conversation_land_on_one_credential(
    start_upstream, start_keyrail
):
    fake, url = await start_upstream()
    kr = await start_keyrail(CONFIG.format(key=KEY, mgmt=MGMT, url=url))
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key=KEY, max_retries=0) as c:
        for turn in range(50):
            await ask(c, turn)  # no session id: the system prompt and first message name it
        by_hash = {used_key(s) for s in fake.seen}
        assert len(by_hash) == 1
        fake.seen.clear()
        for turn in range(8):  # other conversations, named by Codex's header, spread out
            await ask(c, 0, session=f"codex-thread-{turn}")
        assert len({used_key(s) for s in fake.seen}) > 1
        fake.seen.clear()
        for turn in range(10):
            await ask(c, turn, session="codex-thread-3")
        assert len({used_key(s) for s in fake.seen}) == 1
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {MGMT}"}
        async with http.get(f"{kr.url}/v0/management/sessions", headers=headers) as resp:
            sessions = await resp.json()
    assert sessions["enabled"] is True and len(sessions["data"]) == 9
    assert {b["model"] for b in sessions["data"]} == {"fast"}
    assert "codex-thread" not in orjson.dumps(sessions).decode()  # ids are kept as digests


async def test_a_429_escapes_for_one_request_and_a_401_rebinds_for_good(
    start_upstream, start_keyrail
):
    fake, url = await start_upstream()
    kr = await start_keyrail(CONFIG.format(key=KEY, mgmt=MGMT, url=url))
    clock = FakeClock()
    kr.app[SCHEDULER].clock = clock
    failing: dict[str, int] = {}  # upstream key -> status it answers once

    def script(seen) -> Script:
        status = failing.pop(used_key(seen), 200)
        return Script(status=status, headers={"Retry-After": "30"} if status == 429 else {})

    fake.script = script
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key=KEY, max_retries=0) as c:
        await ask(c, 0, session="conv")
        bound = used_key(fake.seen[-1])

        # A 429 on it: this request goes elsewhere at once, the binding stays.
        failing[bound] = 429
        fake.seen.clear()
        await ask(c, 1, session="conv")
        tried = [used_key(s) for s in fake.seen]
        assert tried[0] == bound and tried[1] != bound and len(tried) == 2
        fake.seen.clear()
        await ask(c, 2, session="conv")  # still cooling: elsewhere again, no rebind
        assert used_key(fake.seen[-1]) != bound
        clock.advance(31)  # the cooldown is over: back to its credential
        fake.seen.clear()
        for turn in range(3, 8):
            await ask(c, turn, session="conv")
        assert {used_key(s) for s in fake.seen} == {bound}

        # A 401 on it: the conversation moves, and stays moved after the disable ends.
        failing[bound] = 401
        fake.seen.clear()
        await ask(c, 8, session="conv")
        new = used_key(fake.seen[-1])
        assert new != bound and used_key(fake.seen[0]) == bound
        clock.advance(3600)  # the 30-minute disable is long over
        fake.seen.clear()
        for turn in range(9, 20):
            await ask(c, turn, session="conv")
        assert Counter(used_key(s) for s in fake.seen) == {new: 11}
    assert kr.app[CONVERSATIONS].rebinds == 1


def test_the_agents_session_ids_name_their_conversations():
    """Claude Code: `X-Claude-Code-Session-Id` and `metadata.user_id` (a JSON string holding
    `session_id`); Codex CLI: `session-id` / `thread-id` headers and `prompt_cache_key`."""
    claude_session = "2acb3874-3c96-4c13-8bb7-c7cdd3a33018"
    user_id = orjson.dumps(
        {"device_id": "2e3f4d2c", "account_uuid": "", "session_id": claude_session}
    ).decode()
    claude_turns = [
        (
            {"x-claude-code-session-id": claude_session},
            {"metadata": {"user_id": user_id}, "messages": [{"role": "user", "content": str(n)}]},
        )
        for n in range(2)
    ]
    ids = {conversation_of(h, b, DEFAULT_SESSION_SOURCES) for h, b in claude_turns}
    assert len(ids) == 1 and None not in ids
    # Without the header (another client of the Messages API), metadata.user_id names it.
    body_only = conversation_of({}, claude_turns[0][1], DEFAULT_SESSION_SOURCES)
    assert body_only is not None and body_only != conversation_of({}, {}, DEFAULT_SESSION_SOURCES)

    codex = "01a2506f-9916-7e40-a516-8d5f47f7e45a"
    codex_turns = [
        (
            {"session-id": codex, "thread-id": codex},
            {
                "prompt_cache_key": codex,
                "input": [
                    {"role": "user", "content": [{"type": "input_text", "text": f"turn {n}"}]}
                ],
            },
        )
        for n in range(2)
    ]
    codex_ids = {conversation_of(h, b, DEFAULT_SESSION_SOURCES) for h, b in codex_turns}
    assert len(codex_ids) == 1 and not codex_ids & ids
    assert conversation_of({}, codex_turns[0][1], DEFAULT_SESSION_SOURCES) is not None

    # Nothing names it: the system prompt and the first user message do, whatever follows,
    # and whichever block carries the cache marker this turn.
    def turn(n: int, marked: bool) -> dict[str, object]:
        first = {"type": "text", "text": "Fix it."}
        if marked:
            first["cache_control"] = {"type": "ephemeral"}
        history = [{"role": "assistant", "content": f"a{n}"}] * n
        return {"system": "Be brief.", "messages": [{"role": "user", "content": [first]}, *history]}

    hashed = {conversation_of({}, turn(n, n % 2 == 0), DEFAULT_SESSION_SOURCES) for n in range(4)}
    assert len(hashed) == 1 and None not in hashed
    assert conversation_of({}, {"messages": []}, DEFAULT_SESSION_SOURCES) is None


def test_bindings_are_a_bounded_lru_with_a_ttl():
    clock = FakeClock()
    table = Conversations(ttl=60, max_bindings=3, clock=clock)
    for n in range(3):
        table.bind("m", f"c{n}", f"cred{n}")
    assert table.bound("m", "c0") == "cred0"  # used: now the most recent
    table.bind("m", "c3", "cred3")  # over the bound: the least recently used (c1) goes
    assert len(table) == 3 and table.bound("m", "c1") is None
    clock.advance(59)
    assert table.bound("m", "c0") == "cred0"  # a hit refreshes the TTL
    clock.advance(59)
    assert table.bound("m", "c0") == "cred0" and table.bound("m", "c2") is None
    table.configure(ttl=60, max_bindings=1)
    assert len(table) == 1
