"""Usage per client: what each named client key did since keyrail started.

Owns: counting each finished request of a named client (requests, status classes, prompt and
completion tokens, a per-model breakdown, last seen), the JSON of `/v1/metrics/clients` (with
each client's limits and what is left of them, from limits.py), and the Prometheus families
`keyrail_client_requests_total{client,status_class}` and
`keyrail_client_tokens_total{client,direction}`. Does not own: per-provider metrics
(metrics.py), the access line (logs.py), or enforcing limits (limits.py).

Counted per client request (not per upstream attempt, which the provider metrics count), at
its end, including the requests keyrail refused itself (403 model_not_allowed, 429
client_rate_limited). Plain string keys have no name and are not counted here. Memory is
bounded: clients are the configured ones, and each keeps at most `MAX_MODELS` model entries
(the rest are summed under "(other)", since a client may send any model name).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.metrics import STATUS_CLASSES, _iso, _status_class
from proxy.redact import REDACTOR

MAX_MODELS = 256
OTHER_MODELS = "(other)"


class _Counts:
    __slots__ = ("completion", "prompt", "requests", "statuses")

    def __init__(self) -> None:
        self.requests = 0
        self.statuses = [0] * len(STATUS_CLASSES)
        self.prompt = 0
        self.completion = 0

    def json(self) -> dict[str, Any]:
        return {
            "request_count": self.requests,
            "success_count": self.statuses[0],
            "failure_count": self.requests - self.statuses[0],
            "status_counts": dict(zip(STATUS_CLASSES, self.statuses, strict=True)),
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
        }


class _Client(_Counts):
    __slots__ = ("last_seen", "models")

    def __init__(self) -> None:
        super().__init__()
        self.models: dict[str, _Counts] = {}
        self.last_seen: float | None = None


class ClientUsage:
    """Totals per client name. `clock` gives wall-clock seconds (for last seen)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._clients: dict[str, _Client] = {}

    def record(
        self, client: str, model: str, status: int, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """Count one finished request of `client`."""
        c = self._clients.get(client)
        if c is None:
            c = self._clients[client] = _Client()
        status_class = 0 if 200 <= status < 300 else _status_class(status)
        m = c.models.get(model)
        if m is None:
            m = _new_model(c, model)
        # The client's totals and the model's, inline (`_Counts.add` twice): on every request.
        c.requests += 1
        c.statuses[status_class] += 1
        c.prompt += prompt_tokens
        c.completion += completion_tokens
        m.requests += 1
        m.statuses[status_class] += 1
        m.prompt += prompt_tokens
        m.completion += completion_tokens
        c.last_seen = self.clock()

    def of(self, client: str) -> dict[str, Any]:
        """A client's totals, per-model breakdown and last seen (zeros without traffic)."""
        c = self._clients.get(client) or _Client()
        return {
            "client": client,
            **c.json(),
            "models": {name: m.json() for name, m in sorted(c.models.items())},
            "last_seen": _iso(c.last_seen),
        }

    # -- sharing (proxy/state/): one deployment's usage from every process's ----------------

    def export(self) -> bytes:
        """Everything counted here, for other processes to `absorb` (JSON)."""
        return orjson.dumps(
            {
                name: [_pack(c), c.last_seen, {m: _pack(mc) for m, mc in c.models.items()}]
                for name, c in self._clients.items()
            }
        )

    def absorb(self, exported: bytes) -> None:
        """Add another process's `export` into these counts."""
        for name, (counts, last_seen, models) in orjson.loads(exported).items():
            c = self._clients.get(name)
            if c is None:
                c = self._clients[name] = _Client()
            _unpack_into(c, counts)
            if last_seen is not None and (c.last_seen is None or last_seen > c.last_seen):
                c.last_seen = last_seen
            for model, packed in models.items():
                _unpack_into(c.models.get(model) or _new_model(c, model), packed)

    def totals(self, client: str) -> tuple[list[int], int, int]:
        """Status class counts, prompt and completion tokens (for Prometheus)."""
        c = self._clients.get(client) or _Client()
        return c.statuses, c.prompt, c.completion


def _new_model(c: _Client, model: str) -> _Counts:
    """The counts of a model the client has none for yet: its own entry while the client has
    fewer than MAX_MODELS, else the shared "(other)" entry."""
    model = model if len(c.models) < MAX_MODELS else OTHER_MODELS
    m = c.models.get(model)
    if m is None:
        m = c.models[model] = _Counts()
    return m


def _pack(c: _Counts) -> list[Any]:
    return [c.requests, c.statuses, c.prompt, c.completion]


def _unpack_into(c: _Counts, packed: list[Any]) -> None:
    requests, statuses, prompt, completion = packed
    c.requests += requests
    for i, n in enumerate(statuses[: len(c.statuses)]):
        c.statuses[i] += n
    c.prompt += prompt
    c.completion += completion


class ClientCollector(Collector):
    """The client families of `/metrics`, for the configured clients (traffic or not)."""

    def __init__(self, usage: ClientUsage, names: Callable[[], Iterable[str]]) -> None:
        self._usage = usage
        self._names = names

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "keyrail_client_requests",
            "Client requests by client name and status class.",
            labels=("client", "status_class"),
        )
        tokens = CounterMetricFamily(
            "keyrail_client_tokens",
            "Tokens the upstreams reported, by client name.",
            labels=("client", "direction"),
        )
        for name in self._names():
            label = REDACTOR.redact(name)
            statuses, prompt, completion = self._usage.totals(name)
            for status_class, count in zip(STATUS_CLASSES, statuses, strict=True):
                requests.add_metric([label, status_class], count)
            tokens.add_metric([label, "prompt"], prompt)
            tokens.add_metric([label, "completion"], completion)
        yield from (requests, tokens)
