"""Sticky sessions: the credential a conversation stays on, and when it moves.

Owns: finding a request's conversation id (`conversation_of`: the session identifiers agents
send, from a configurable list of `header:NAME` / `body:a.b.c` sources, else a hash of the
system prompt and the first user message), the bindings (pool, conversation) -> credential id
in a bounded LRU with a TTL refreshed on every hit, and the decision for one request
(`Sticky`): the bound credential when it is ready; another one without rebinding while it
cools down after a 429 or a transient error (soft escape, so the conversation goes back after
the cooldown and keeps its prompt cache); a rebind when it is disabled (401/402/403: a dead or
quota-spent key) or gone from the config (hard rebind).
Does not own: credential states (scheduler.py), the request loop (failover.py).

Conversation ids are kept as digests: a binding shows no session id, and the table's memory per
entry is fixed. Bindings are per pool (the client model id): one conversation that uses two
models (Claude Code's small and main models) has a credential in each pool.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import orjson

from proxy.scheduler import Candidate

C = TypeVar("C", bound=Candidate)

#: The longest session id value read; longer ones are cut (they are hashed anyway).
_MAX_ID = 512


class _Scheduler(Protocol):
    def ready(self, c: Candidate) -> bool: ...
    def disabled(self, c: Candidate) -> bool: ...


def conversation_of(
    headers: Mapping[str, str], body: Mapping[str, Any], sources: Sequence[str]
) -> str | None:
    """The conversation this request belongs to (a digest), or None when nothing names it."""
    for source in sources:
        kind, _, where = source.partition(":")
        value = headers.get(where) if kind == "header" else _field(body, where)
        if isinstance(value, str | int) and str(value).strip():
            return _digest(f"{source}={str(value).strip()[:_MAX_ID]}")
    first = _first_prompt(body)
    return None if first is None else _digest("prompt=" + first)


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=12).hexdigest()


def _field(body: Any, path: str) -> Any:
    """`a.b.c` inside the body; a step onto a string holding a JSON object parses it (Claude
    Code's `metadata.user_id` is such a string, with `session_id` inside)."""
    value = body
    for step in path.split("."):
        if isinstance(value, str) and value[:1] == "{":
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError:
                return None
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    return value


def _first_prompt(body: Mapping[str, Any]) -> str | None:
    """The system prompt and the first user message's text, in any chat dialect (Chat
    Completions `messages`, Messages `system` + `messages`, Responses `instructions` +
    `input`): what every request of one conversation repeats."""
    system = [_text(body.get("system")), _text(body.get("instructions"))]
    items = body.get("messages")
    if items is None:
        items = body.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
    if not isinstance(items, list):
        return None
    user = None
    for item in items:
        if not isinstance(item, dict):
            continue
        role = item.get("role")
        if role in ("system", "developer"):
            system.append(_text(item.get("content")))
        elif role == "user":
            user = _text(item.get("content"))
            break
    if not user:
        return None
    return "\x00".join(system) + "\x00" + user


def _text(content: Any) -> str:
    """The text of a content value: a string, or the `text` of its blocks (so that a
    `cache_control` moving between turns does not change the conversation)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)
        )
    return ""


class Conversations:
    """(pool, conversation) -> credential id, at most `max_bindings`, each for `ttl` seconds
    after its last use. `clock` is monotonic seconds (injectable for tests)."""

    def __init__(
        self, ttl: float, max_bindings: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_bindings = max_bindings
        self.clock = clock
        self._bindings: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self.rebinds = 0  # hard rebinds since start (management shows it)
        #: told of every binding made here: (pool, conversation, credential id)
        self.on_bind: Callable[[str, str, str], None] | None = None

    def configure(self, ttl: float, max_bindings: int) -> None:
        """New settings (a reload): bindings are kept, the oldest dropped if over the bound."""
        self.ttl, self.max_bindings = ttl, max_bindings
        while len(self._bindings) > max_bindings:
            self._bindings.popitem(last=False)

    def bound(self, pool: str, conversation: str) -> str | None:
        """The credential id the conversation is bound to in this pool (refreshing its TTL)."""
        key = (pool, conversation)
        entry = self._bindings.get(key)
        if entry is None:
            return None
        now = self.clock()
        if entry[1] <= now:
            del self._bindings[key]
            return None
        self._bindings[key] = (entry[0], now + self.ttl)
        self._bindings.move_to_end(key)
        return entry[0]

    def bind(self, pool: str, conversation: str, credential_id: str) -> None:
        self.merge(pool, conversation, credential_id)
        if self.on_bind is not None:  # shared state publishes it (proxy/state/shared.py)
            self.on_bind(pool, conversation, credential_id)

    def merge(self, pool: str, conversation: str, credential_id: str) -> None:
        """A binding, made here (`bind`) or by another process sharing the state."""
        key = (pool, conversation)
        self._bindings[key] = (credential_id, self.clock() + self.ttl)
        self._bindings.move_to_end(key)
        if len(self._bindings) > self.max_bindings:
            self._bindings.popitem(last=False)  # the least recently used

    def views(self) -> list[dict[str, Any]]:
        """The live bindings, most recent first (for management)."""
        now = self.clock()
        return [
            {
                "model": pool,
                "conversation": conversation,
                "credential": cid,
                "expires_in_seconds": round(expires - now, 1),
            }
            for (pool, conversation), (cid, expires) in reversed(self._bindings.items())
            if expires > now
        ]

    def __len__(self) -> int:
        return len(self._bindings)


class Sticky:
    """One request's conversation in one pool: which credential to try first, and whether
    its success (re)binds the conversation."""

    __slots__ = ("_bound_id", "_pool", "_table", "conversation")

    def __init__(self, table: Conversations, pool: str, conversation: str) -> None:
        self._table = table
        self._pool = pool
        self.conversation = conversation
        self._bound_id = table.bound(pool, conversation)

    def first(self, targets: Sequence[C], scheduler: _Scheduler) -> C | None:
        """The bound credential when it is ready; None: pick as usual (nothing bound yet,
        the bound one is cooling down or disabled, or it is gone)."""
        if self._bound_id is None:
            return None
        for target in targets:
            if target.credential.id == self._bound_id:
                return target if scheduler.ready(target) else None
        return None

    def served(
        self, target: Candidate, targets: Sequence[Candidate], scheduler: _Scheduler
    ) -> None:
        """`target` answered: bind to it unless this was a soft escape (the bound credential
        is only cooling down, so the conversation goes back to it afterwards)."""
        bound_id = self._bound_id
        if bound_id == target.credential.id:
            return  # on its credential (the TTL was refreshed when it was looked up)
        if bound_id is not None:
            bound = next((t for t in targets if t.credential.id == bound_id), None)
            if bound is not None and not scheduler.disabled(bound):
                return  # soft escape: 429 or transient cooldown; keep the binding
            self._table.rebinds += 1
        self._table.bind(self._pool, self.conversation, target.credential.id)
        self._bound_id = target.credential.id
