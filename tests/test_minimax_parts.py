"""MiniMax's quirks, each as a pure function: the `<think>` splitter, the error table, the
answer translation (final frame, placeholders, mirrors), the request rewrite and the quota."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from drivers.minimax import chunks, codes, quota, request
from drivers.minimax.think import ThinkSplitter, split_message
from proxy.errors import (
    CredentialRejected,
    InvalidRequest,
    RateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)


def run(pieces: list[str], reasoning_first: str = "") -> tuple[str, str, list[tuple[str, str]]]:
    s = ThinkSplitter()
    if reasoning_first:
        s.reasoning(reasoning_first)
    steps = [s.content(p) for p in pieces]
    steps.append(s.end())
    return "".join(r for r, _ in steps), "".join(a for _, a in steps), steps


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7, 100])
def test_think_block_split_at_any_boundary(cut: int) -> None:
    text = "<think>I should greet.</think>\n\nHello there."
    pieces = [text[i : i + cut] for i in range(0, len(text), cut)]
    reasoning, answer, _ = run(pieces)
    assert (reasoning, answer) == ("I should greet.", "Hello there.")


def test_think_is_streamed_as_it_comes_not_held_to_the_end() -> None:
    _, _, steps = run(["<think>step one ", "step two", "</thi", "nk>Hi"])
    assert steps[0] == ("step one ", "") and steps[1] == ("step two", "")
    assert steps[2] == ("", "") and steps[3] == ("", "Hi")


def test_orphan_leading_close_tag_is_dropped() -> None:
    reasoning, answer, _ = run(["</th", "ink>\n\n", "Answer ", "here"], reasoning_first="r")
    assert (reasoning, answer) == ("", "Answer here")


def test_mirrored_think_block_is_dropped_when_reasoning_arrived_apart() -> None:
    reasoning, answer, _ = run(["<think>I should", " greet.</think>", "Hi"], "I should greet.")
    assert (reasoning, answer) == ("", "Hi")


@pytest.mark.parametrize("cut", [1, 2, 3, 7])
@pytest.mark.parametrize("opening", ["<think>", ""])
def test_mirror_cut_anywhere_is_dropped(cut: int, opening: str) -> None:
    text = f"{opening}I should greet.</think>\n\nHi there."
    pieces = [text[i : i + cut] for i in range(0, len(text), cut)]
    assert run(pieces, "I should greet.")[:2] == ("", "Hi there.")


def test_text_that_stops_mirroring_is_the_answer_whole() -> None:
    reasoning, answer, _ = run(["I sh", "ould</th", "ought so"], "I should greet.")
    assert (reasoning, answer) == ("", "I should</thought so")


def test_a_long_mirror_is_checked_once_per_delta() -> None:
    thought = "word " * 20_000
    splitter = ThinkSplitter()
    splitter.reasoning(thought)
    for i in range(0, len(thought), 5):  # 20,000 deltas of one long mirror, all held back
        assert splitter.content(thought[i : i + 5]) == ("", "")
    assert splitter.content("</think>Hi") == ("", "Hi")


def test_mirror_without_opening_tag_is_dropped() -> None:
    reasoning, answer, steps = run(["I should ", "greet.", "</think>\n", "Hi"], "I should greet.")
    assert (reasoning, answer) == ("", "Hi")
    assert steps[0] == ("", "")  # held while it could be a mirror


def test_an_answer_that_begins_like_the_reasoning_is_not_lost() -> None:
    assert run(["Hello!"], reasoning_first="Hello! The user greets me.")[:2] == ("", "Hello!")


def test_plain_answer_passes_at_once_even_after_reasoning() -> None:
    _, answer, steps = run(["Hello", " world"], reasoning_first="Let me think")
    assert steps[0] == ("", "Hello") and answer == "Hello world"


def test_plain_answer_without_any_reasoning_is_untouched() -> None:
    _, answer, steps = run(["  Hi", " there"])
    assert steps[0] == ("", "  Hi") and answer == "  Hi there"


def test_unclosed_think_at_end_is_reasoning() -> None:
    assert run(["<think>never closed"])[:2] == ("never closed", "")


def test_split_message_shapes() -> None:
    assert split_message("<think>a</think>\n\nb", False) == ("a", "b")
    assert split_message("<think>a</think>\n\nb", True) == ("", "b")
    assert split_message("thought</think>\n\nb", False) == ("thought", "b")  # orphan
    assert split_message("plain", False) == ("", "plain")


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "cls", "status"),
    [
        (1039, RateLimited, 429), (1041, RateLimited, 429), (2045, RateLimited, 429),
        (2056, RateLimited, 429), (2049, CredentialRejected, 401),
        (1004, CredentialRejected, 401), (1008, CredentialRejected, 402),
        (1026, UpstreamRejected, 400), (1027, UpstreamRejected, 400),
        (1042, UpstreamRejected, 400), (2013, UpstreamRejected, 400),
        (1001, UpstreamUnavailable, 504), (1033, UpstreamUnavailable, 500),
        (2061, UpstreamUnavailable, 403), (9999, UpstreamUnavailable, 502),
    ],
)  # fmt: skip
def test_error_table(code: int, cls: type, status: int) -> None:
    error = codes.error_for(code, "detail", provider="mm", window_ends_in=1234.0)
    assert type(error) is cls and error.status == status
    assert str(code) in error.message and "detail" in error.message
    assert error.retry_after == (1234.0 if code == 2056 else None)
    if code in (1026, 1027):
        assert error.code == "content_filter"


def test_codes_found_in_both_envelopes() -> None:
    assert codes.base_resp_error({"base_resp": {"status_code": 0}}) is None
    assert codes.base_resp_error({"base_resp": {"status_code": 2056, "status_msg": "x"}}) == (
        2056,
        "x",
    )
    message = "invalid params, tool_call_id: call_1 (2013)"
    body = {"type": "error", "error": {"type": "bad_request_error", "message": message}}
    assert codes.code_in_error_body(orjson.dumps(body)) == (2013, body["error"]["message"])
    assert codes.code_in_error_body(b"not json") is None


# -- answers ------------------------------------------------------------------------------


def frame(delta: dict[str, Any], finish: str | None = None, **top: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 5,
                         "model": "MiniMax-M2.7", "choices": [choice], **top})  # fmt: skip


ZERO = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
REAL = {"prompt_tokens": 26, "completion_tokens": 223, "total_tokens": 249,
        "completion_tokens_details": {"reasoning_tokens": 214}}  # fmt: skip


def translate(frames: list[bytes]) -> list[dict[str, Any]]:
    t = chunks.StreamTranslator()
    out = [p for f in frames for p in t.feed(f)] + t.end()
    return [orjson.loads(p) for p in out]


def test_stream_final_frame_becomes_a_last_chunk_with_usage() -> None:
    final = orjson.dumps({"id": "c1", "object": "chat.completion", "created": 5,
        "model": "MiniMax-M2.7", "usage": REAL, "base_resp": {"status_code": 0},
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Hello there"}}]})  # fmt: skip
    out = translate([
        frame({"role": "assistant", "reasoning_details": [{"type": "reasoning.text",
               "text": "think"}]}, usage=ZERO),
        frame({"content": "Hello"}, usage=ZERO), frame({"content": " there"}, usage=ZERO),
        final, b"[DONE]",
    ])  # fmt: skip
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in out if c["choices"])
    assert text == "Hello there"  # the final frame's repeated content is not added
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "reasoning_content": "think"}
    assert [c["choices"][0]["finish_reason"] for c in out if c["choices"]][-1] == "stop"
    assert out[-1]["choices"] == [] and out[-1]["usage"] == REAL
    assert sum("usage" in c for c in out) == 1  # zero placeholders gone
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "c1" for c in out)


def test_stream_error_in_band_raises_the_code() -> None:
    t = chunks.StreamTranslator()
    with pytest.raises(chunks.MinimaxFailure) as info:
        t.feed(orjson.dumps({"base_resp": {"status_code": 1039, "status_msg": "limit"}}))
    assert info.value.code == 1039


def test_whole_answer_cleaned() -> None:
    data = {"id": "x", "object": "chat.completion", "model": "MiniMax-M2.7", "usage": REAL,
            "input_sensitive": False, "base_resp": {"status_code": 0, "status_msg": ""},
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "<think>plan</think>\n\nCalling.",
                "tool_calls": [{"id": "call_function_a_1", "type": "function",
                                "function": {"name": "f", "arguments": "{}"}}]}}]}  # fmt: skip
    out, thought, ids = chunks.completion(data)
    message = out["choices"][0]["message"]
    assert message["content"] == "Calling." and message["reasoning_content"] == "plan"
    assert "base_resp" not in out and "input_sensitive" not in out
    assert (thought, ids) == ("plan", ["call_function_a_1"])
    with pytest.raises(chunks.MinimaxFailure):
        chunks.completion({"base_resp": {"status_code": 2049, "status_msg": "bad key"}})


# -- the request --------------------------------------------------------------------------


def test_request_rewrite() -> None:
    body = {"model": "minimax-m2.5", "max_tokens": 100, "temperature": 0, "top_p": 0.9,
            "reasoning_effort": "high", "tool_choice": "auto", "seed": 1,
            "parallel_tool_calls": False, "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "f", "strict": True,
                                                        "parameters": {}}}],
            "messages": [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "", "reasoning_content": "plan",
                          "tool_calls": [{"id": "call_1"}]},
                         {"role": "assistant", "content": "",
                          "tool_calls": [{"id": "call_2"}]}]}  # fmt: skip
    out = request.build(body, "minimax-m2.5", {"call_2": "remembered"}.get)
    assert out["model"] == "MiniMax-M2.5" and out["reasoning_split"] is True
    assert out["max_completion_tokens"] == 100 and "max_tokens" not in out
    assert out["temperature"] == request.FLOOR and out["top_p"] == 0.9
    for gone in ("reasoning_effort", "tool_choice", "seed", "parallel_tool_calls",
                 "response_format"):  # fmt: skip
        assert gone not in out
    assert "strict" not in out["tools"][0]["function"]
    assert out["messages"][1]["reasoning_details"] == [{"type": "reasoning.text", "text": "plan"}]
    assert "reasoning_content" not in out["messages"][1]
    assert out["messages"][2]["reasoning_details"][0]["text"] == "remembered"
    assert body["max_tokens"] == 100  # the client's body is not changed


@pytest.mark.parametrize("value", [1.5, -0.1, "hot"])
def test_temperature_out_of_range_is_a_clear_400(value: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        request.build({"temperature": value, "messages": []}, "MiniMax-M2")
    assert info.value.status == 400 and info.value.param == "temperature"


# -- quota --------------------------------------------------------------------------------


def test_quota_parsing_and_spent_credentials() -> None:
    now = 1_000_000.0
    answer = {"base_resp": {"status_code": 0}, "model_remains": [{
        "model_name": "MiniMax-M2", "current_interval_total_count": 1500,
        "current_interval_usage_count": 0,  # the REMAINING count, despite its name
        "start_time": (now - 3600) * 1000, "end_time": (now + 7200) * 1000,
        "remains_time": 7200 * 1000}]}  # fmt: skip
    (q,) = quota.parse_remains(answer, now)
    assert (q.limit, q.remaining, q.used, q.spent, q.resets_at) == (1500, 0, 1500, True, now + 7200)
    book = quota.QuotaBook(clock=lambda: now)
    assert book.spent_for("c", "MiniMax-M2") is None
    book.record("c", [q])
    assert book.spent_for("c", "MiniMax-M2.7") == 7200  # no entry of its own: the tightest
    assert quota.tightest([q]) is q
    assert book.window_spent("c", "MiniMax-M2") == 7200
    with pytest.raises(ValueError):
        quota.parse_remains({"base_resp": {"status_code": 1004, "status_msg": "no"}}, now)


def test_window_spent_without_a_reading_waits_a_while_then_looks_again() -> None:
    book = quota.QuotaBook(clock=lambda: 50.0)
    assert book.window_spent("c", "m") == quota.UNKNOWN_WINDOW_WAIT
    assert book.spent_for("c", "m") == quota.UNKNOWN_WINDOW_WAIT


# -- addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "base", "expected"),
    [
        ({}, "", "https://api.minimax.io/v1"),
        ({"region": "cn"}, "", "https://api.minimaxi.com/v1"),
        ({}, "https://api.minimax.io/anthropic", "https://api.minimax.io/v1"),
        ({"region": "cn"}, "https://api.minimax.chat/v1/", "https://api.minimax.chat/v1"),
    ],
)
async def test_upstream_address(options: dict[str, Any], base: str, expected: str) -> None:
    import aiohttp

    from drivers.minimax import MinimaxDriver
    from proxy.config import ProviderBlock

    block = ProviderBlock(driver="minimax", name="mm", base_url=base,
                          options={"api-key": "k", **options})  # fmt: skip
    async with aiohttp.ClientSession() as session:
        driver = MinimaxDriver(block, session)
        assert driver.base_url == expected
        assert driver.origin == expected.removesuffix("/v1")
    mars = ProviderBlock(driver="minimax", name="mm", options={"region": "mars"})
    (region, keys) = MinimaxDriver.check_options(mars)
    assert "'region' must be global or cn" in region and "'api-key' or 'token-file'" in keys
