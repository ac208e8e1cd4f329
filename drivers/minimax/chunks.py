"""MiniMax's answers → clean OpenAI chat (protocols/minimax.md §4, M2).

Owns: the streamed translation, one SSE data payload at a time (`StreamTranslator`), and the
whole-answer one (`completion`): `reasoning_details` (or `reasoning_content`) → the
`reasoning_content` delta/field; `<think>` text split out of `content` (think.py); the zero
usage placeholders of early chunks removed; a final frame that is a whole `chat.completion`
(`message` instead of `delta`, repeating the full text) turned into a proper last chunk with
its finish reason and usage, never into more content; a non-zero `base_resp.status_code`
anywhere → `MinimaxFailure`; MiniMax-only top-level fields dropped. Does not own: what a
failure decides (codes.py, via the driver), the SSE framing (the driver's stream).

The output is what the hub's OpenAI chat decoder and every OpenAI SDK expect: chunks with
`delta.role`, `delta.content`, `delta.reasoning_content`, `delta.tool_calls`, then one
`finish_reason`, then (always) one usage chunk with `"choices": []`.
"""

from __future__ import annotations

from typing import Any

import orjson

from drivers.minimax import codes
from drivers.minimax.think import ThinkSplitter, split_message

_MINIMAX_ONLY = ("base_resp", "input_sensitive", "output_sensitive", "input_sensitive_type",
                 "output_sensitive_type")  # fmt: skip


class MinimaxFailure(Exception):
    """A MiniMax error code inside an answer; the driver turns it into a decision."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"MiniMax error {code}: {detail}")
        self.code = code
        self.detail = detail


def _failure_in(data: Any) -> None:
    found = codes.base_resp_error(data)
    if found is not None:
        raise MinimaxFailure(*found)
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        body = orjson.dumps({"error": error})
        coded = codes.code_in_error_body(body)
        raise MinimaxFailure(*(coded or (1000, str(error.get("message") or "")[:300])))


def reasoning_text(holder: dict[str, Any]) -> str:
    """The displayable reasoning of a delta or message (`reasoning_details` texts joined)."""
    details = holder.get("reasoning_details")
    if isinstance(details, list):
        parts = [
            str(d.get("text") or d.get("summary") or "")
            for d in details
            if isinstance(d, dict) and d.get("type", "reasoning.text") != "reasoning.encrypted"
        ]
        return "".join(parts)
    text = holder.get("reasoning_content") or holder.get("reasoning")
    return text if isinstance(text, str) else ""


def _real_usage(usage: Any) -> bool:
    return isinstance(usage, dict) and any(
        isinstance(v, int | float) and v for k, v in usage.items() if k.endswith("_tokens")
    )


class StreamTranslator:
    """Feed the data payload of each upstream SSE event; get the payloads to send."""

    def __init__(self) -> None:
        self.splitter = ThinkSplitter()
        self._id = "chatcmpl-minimax"
        self._created = 0
        self._model = ""
        self._seen_first = False
        self._finish: str | None = None
        self._finish_sent = False
        self._usage: dict[str, Any] | None = None
        self._sent_text = False
        #: for the driver's replay memory: all reasoning text, and the tool call ids
        self.reasoning: list[str] = []
        self.tool_call_ids: list[str] = []

    def feed(self, payload: bytes) -> list[bytes]:
        if payload == b"[DONE]":
            return []
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return [payload]  # not ours to judge; the client's parser will
        if not isinstance(data, dict):
            return [payload]
        _failure_in(data)
        if not self._seen_first:
            self._seen_first = True
            self._id = str(data.get("id") or self._id)
            self._created = int(data.get("created") or 0)
            self._model = str(data.get("model") or "")
        usage = data.get("usage")
        if _real_usage(usage):
            self._usage = usage
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            return []  # a usage-only chunk: its usage goes out last
        choice = choices[0] if isinstance(choices[0], dict) else {}
        if data.get("object") == "chat.completion" or "message" in choice:
            return self._final_frame(choice)
        delta = choice.get("delta")
        out = self._delta(delta if isinstance(delta, dict) else {})
        finish = choice.get("finish_reason")
        if finish:
            self._finish = str(finish)
            out.extend(self._flush())
            out.append(self._chunk({}, self._finish))
            self._finish_sent = True
        return out

    def end(self) -> list[bytes]:
        """The upstream stream ended: what is held, a finish if none came, then the usage."""
        out = self._flush()
        if not self._finish_sent:
            out.append(self._chunk({}, self._finish or "stop"))
            self._finish_sent = True
        if self._usage is not None:
            out.append(self._usage_chunk(self._usage))
        return out

    # -- internals --------------------------------------------------------------------------

    def _delta(self, delta: dict[str, Any]) -> list[bytes]:
        new: dict[str, Any] = {}
        if delta.get("role"):
            new["role"] = delta["role"]
        thought = reasoning_text(delta)
        if thought:
            self.splitter.reasoning(thought)
            self.reasoning.append(thought)
            new["reasoning_content"] = thought
        content = delta.get("content")
        if isinstance(content, str) and content:
            extra_thought, answer = self.splitter.content(content)
            if extra_thought:
                self.reasoning.append(extra_thought)
                new["reasoning_content"] = new.get("reasoning_content", "") + extra_thought
            if answer:
                new["content"] = answer
        calls = delta.get("tool_calls")
        if isinstance(calls, list) and calls:
            new["tool_calls"] = calls
            self.tool_call_ids.extend(
                str(c["id"]) for c in calls if isinstance(c, dict) and c.get("id")
            )
        if "content" in new or "tool_calls" in new or "reasoning_content" in new:
            self._sent_text = True
        return [self._chunk(new, None)] if new else []

    def _flush(self) -> list[bytes]:
        thought, answer = self.splitter.end()
        new: dict[str, Any] = {}
        if thought:
            self.reasoning.append(thought)
            new["reasoning_content"] = thought
        if answer:
            new["content"] = answer
        return [self._chunk(new, None)] if new else []

    def _final_frame(self, choice: dict[str, Any]) -> list[bytes]:
        """A whole `chat.completion` as the last frame: its content repeats what was streamed.
        Only when nothing was streamed before is its message the answer itself."""
        out: list[bytes] = []
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        if not self._sent_text and message:
            thought = reasoning_text(message)
            content = message.get("content")
            extra, answer = (
                split_message(content, bool(thought)) if isinstance(content, str) else ("", "")
            )
            delta: dict[str, Any] = {"role": "assistant"}
            if thought or extra:
                delta["reasoning_content"] = thought or extra
                self.reasoning.append(thought or extra)
            if answer:
                delta["content"] = answer
            if message.get("tool_calls"):
                delta["tool_calls"] = [
                    {**c, "index": i} for i, c in enumerate(message["tool_calls"])
                ]
            out.append(self._chunk(delta, None))
            self._sent_text = True
        if choice.get("finish_reason") and not self._finish_sent:
            self._finish = str(choice["finish_reason"])
            out.extend(self._flush())
            out.append(self._chunk({}, self._finish))
            self._finish_sent = True
        return out

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> bytes:
        return orjson.dumps({
            "id": self._id, "object": "chat.completion.chunk", "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })  # fmt: skip

    def _usage_chunk(self, usage: dict[str, Any]) -> bytes:
        return orjson.dumps({
            "id": self._id, "object": "chat.completion.chunk", "created": self._created,
            "model": self._model, "choices": [], "usage": usage,
        })  # fmt: skip


def completion(data: Any) -> tuple[dict[str, Any], str, list[str]]:
    """A whole (not streamed) answer → (clean `chat.completion`, its reasoning, tool call ids).

    Raises `MinimaxFailure` for an error inside it.
    """
    _failure_in(data)
    if not isinstance(data, dict):
        raise MinimaxFailure(1000, "the answer is not a JSON object")
    out = {k: v for k, v in data.items() if k not in _MINIMAX_ONLY}
    thoughts: list[str] = []
    ids: list[str] = []
    choices = []
    for choice in out.get("choices") or []:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            choices.append(choice)
            continue
        thought = reasoning_text(message)
        clean = {k: v for k, v in message.items() if k not in ("reasoning_details", "reasoning")}
        content = message.get("content")
        if isinstance(content, str):
            extra, clean["content"] = split_message(content, bool(thought))
            thought = thought or extra
        if thought:
            clean["reasoning_content"] = thought
            thoughts.append(thought)
        else:
            clean.pop("reasoning_content", None)
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict) and call.get("id"):
                ids.append(str(call["id"]))
        choices.append({**choice, "message": clean})
    out["choices"] = choices
    out.setdefault("object", "chat.completion")
    return out, "".join(thoughts), ids
