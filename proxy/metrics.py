"""Provider metrics: what each upstream provider block did, over a rolling window and in total.

Owns: recording one `Attempt` (one upstream try, attributed to the block that served it), the
rolling window and lifetime totals behind `GET /v1/metrics/providers` (a provider-keyed object,
or `?format=list`), and the Prometheus text of `GET /metrics`; it also serves
`GET /v1/metrics/clients` from the clients' usage and limits (proxy/clients/). Does not own:
credential states (the scheduler reports them), quota readings (quota.py: shown here as each
provider's `quota` object, credential id → used, limit, resets_at), the access log (logs.py),
or which paths need
a client key (auth.py).

Counts are of upstream attempts, not client requests: a request that failed over from one
block to another counts once at each. Success is a 2xx answer; anything else is a failure,
and a connect failure or timeout (status 0, or the 502/504 drivers report) counts as a 5xx.

Recording is cheap and lock-free (asyncio runs it on one thread): two bisects into fixed
log-spaced buckets and a few list increments. The window is 60 time slices; a slice is reset
the first time it is reused, so a request counts for the last (window - slice, window]
seconds. Percentiles come from the summed bucket counts: the estimate lies in the same bucket
as the true value. Nothing is sorted per request; everything is summed when someone asks.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from proxy.errors import InvalidRequest
from proxy.redact import REDACTOR
from proxy.scheduler import CredentialView

if TYPE_CHECKING:
    from proxy.http.pipeline import Wrap  # the pipeline imports this module


@dataclass(slots=True)
class Attempt:
    """One upstream attempt, recorded once it has ended (for a stream: when the stream ends)."""

    provider: str
    driver: str
    credential_id: str
    status: int  # upstream HTTP status; 0 when no answer came (connect failure, timeout)
    latency: float  # seconds from sending to the end of the answer
    ttft: float | None = None  # seconds to the first content byte, for streams
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""  # short, non-secret
    dialect: str = ""  # the client's chat dialect (chat, messages, responses), if any


#: Bucket upper bounds in ms: 1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, … up to 10^7 (2.8 h).
#: Successive bounds differ by 20-33 %, so a percentile is known to within that.
BOUNDS_MS: tuple[float, ...] = (
    *(m * 10.0**d for d in range(7) for m in (1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8)),
    1e7,
)
#: The subset of bounds `/metrics` exposes as histogram buckets (all are in BOUNDS_MS).
PROMETHEUS_BOUNDS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000,
                        100000, 250000, 600000)  # fmt: skip
STATUS_CLASSES = ("2xx", "401", "403", "429", "5xx", "other")
CREDENTIAL_STATES = ("ready", "cooling_down", "disabled")
SLICES = 60
_CLASS_OF = {401: 1, 403: 2, 429: 3}

#: The attempts of the client request being served, for its access line and retry count:
#: whoever serves it sets a list here (`token = ATTEMPTS.set([])`, then `ATTEMPTS.reset(token)`)
#: and `record` appends each attempt to it. None: nobody is collecting.
ATTEMPTS: ContextVar[list[Attempt] | None] = ContextVar("keyrail_attempts", default=None)


def bucket_of(ms: float) -> int:
    """Index of the bucket holding `ms` (bucket i holds BOUNDS_MS[i-1] < ms <= BOUNDS_MS[i])."""
    return bisect_left(BOUNDS_MS, ms)


def _status_class(status: int) -> int:
    if 200 <= status < 300:
        return 0
    return _CLASS_OF.get(status, 4 if 500 <= status < 600 or status == 0 else 5)


class _Counts:
    """Counters and histograms of one time slice (or of all time)."""

    __slots__ = ("completion", "epoch", "latency", "latency_sum", "prompt", "statuses", "ttft",
                 "ttft_sum")  # fmt: skip

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch
        self.statuses = [0] * len(STATUS_CLASSES)
        self.latency = [0] * (len(BOUNDS_MS) + 1)
        self.ttft = [0] * (len(BOUNDS_MS) + 1)
        self.latency_sum = 0.0
        self.ttft_sum = 0.0
        self.prompt = 0
        self.completion = 0

    def add(self, status_class: int, latency_bucket: int, a: Attempt, ttft_bucket: int) -> None:
        self.statuses[status_class] += 1
        self.latency[latency_bucket] += 1
        self.latency_sum += a.latency
        if ttft_bucket >= 0:
            self.ttft[ttft_bucket] += 1
            self.ttft_sum += a.ttft or 0.0
        self.prompt += a.prompt_tokens
        self.completion += a.completion_tokens

    def merge(self, other: _Counts) -> None:
        for mine, theirs in ((self.statuses, other.statuses), (self.latency, other.latency),
                             (self.ttft, other.ttft)):  # fmt: skip
            for i, n in enumerate(theirs):
                if n:
                    mine[i] += n
        self.latency_sum += other.latency_sum
        self.ttft_sum += other.ttft_sum
        self.prompt += other.prompt
        self.completion += other.completion


#: The empty slice every ring starts with; its epoch never matches, so it is never added to.
_NEVER = _Counts(epoch=-(1 << 62))


class _Provider:
    __slots__ = ("dialects", "folded", "last_error", "last_seen", "retries", "slices")

    def __init__(self) -> None:
        self.slices = [_NEVER] * SLICES
        # Lifetime totals are the slices in the ring plus the ones it has recycled, folded
        # in here when they were: one count per attempt instead of two.
        self.folded = _Counts()
        self.retries = 0  # attempts that were not the first of their client request
        self.last_seen: float | None = None
        self.last_error: tuple[float, int, str] | None = None
        self.dialects: dict[str, int] = {}  # lifetime attempts by the client's dialect


class ProviderMetrics:
    """Per provider block: a rolling window of `window_seconds`, and lifetime totals.

    `clock` gives wall-clock seconds; tests replace it to move time without sleeping.
    """

    def __init__(self, window_seconds: int = 600, clock: Callable[[], float] = time.time) -> None:
        self.window_seconds = window_seconds
        self.clock = clock
        self._slice_seconds = window_seconds / SLICES
        self._providers: dict[str, _Provider] = {}
        #: packed past slices for `export`: (slice seconds, {(provider, epoch): packed})
        self._packed: tuple[float, dict[tuple[str, int], list[Any]]] | None = None

    def set_window(self, window_seconds: int) -> None:
        """A new window length (a reload): the window starts empty, lifetime totals keep
        everything."""
        if window_seconds == self.window_seconds:
            return
        for p in self._providers.values():
            for s in p.slices:
                p.folded.merge(s)
            p.slices = [_NEVER] * SLICES
        self.window_seconds = window_seconds
        self._slice_seconds = window_seconds / SLICES

    def record(self, attempt: Attempt) -> None:
        """Count one finished attempt. Called on the hot path: no locks, no sorting."""
        now = self.clock()
        p = self._providers.get(attempt.provider)
        if p is None:
            p = self._providers[attempt.provider] = _Provider()
        epoch = int(now // self._slice_seconds)
        window = p.slices[epoch % SLICES]
        if window.epoch != epoch:
            p.folded.merge(window)
            window = p.slices[epoch % SLICES] = _Counts(epoch)
        status_class = _status_class(attempt.status)
        latency_bucket = bisect_left(BOUNDS_MS, attempt.latency * 1000.0)
        ttft = attempt.ttft
        ttft_bucket = -1 if ttft is None else bisect_left(BOUNDS_MS, ttft * 1000.0)
        window.add(status_class, latency_bucket, attempt, ttft_bucket)
        p.last_seen = now
        if attempt.dialect:
            p.dialects[attempt.dialect] = p.dialects.get(attempt.dialect, 0) + 1
        if status_class:
            p.last_error = (now, attempt.status, attempt.error)
        trail = ATTEMPTS.get()
        if trail is not None:
            if trail:
                p.retries += 1
            trail.append(attempt)

    def _window(self, p: _Provider, now: float) -> _Counts:
        current = int(now // self._slice_seconds)
        total = _Counts()
        for s in p.slices:
            if current - SLICES < s.epoch <= current:
                total.merge(s)
        return total

    def snapshot(
        self,
        credentials: Iterable[CredentialView],
        drivers: Mapping[str, str],
        quotas: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """`/v1/metrics/providers`: every provider in `drivers` (provider → driver name);
        `quotas` is provider → credential id → quota object (`Quotas.by_provider`)."""
        now = self.clock()
        creds: dict[str, dict[str, int]] = {}
        for view in credentials:
            c = creds.setdefault(view.provider, dict.fromkeys(("total", *CREDENTIAL_STATES), 0))
            c["total"] += 1
            c[view.state] = c.get(view.state, 0) + 1
        out: dict[str, dict[str, Any]] = {}
        for provider, driver in drivers.items():
            p = self._providers.get(provider) or _Provider()
            w = self._window(p, now)
            n = sum(w.statuses)
            ok = w.statuses[0]
            out[provider] = {
                "provider": provider,
                "driver": driver,
                "window_seconds": self.window_seconds,
                "request_count": n,
                "success_count": ok,
                "failure_count": n - ok,
                "success_rate": round(ok / n, 4) if n else 1.0,
                "error_rate": round((n - ok) / n, 4) if n else 0.0,
                "rate_limited_ratio": round(w.statuses[3] / n, 4) if n else 0.0,
                "status_counts": dict(zip(STATUS_CLASSES, w.statuses, strict=True)),
                "latency_p50_ms": percentile(w.latency, 0.50),
                "latency_p95_ms": percentile(w.latency, 0.95),
                "latency_p99_ms": percentile(w.latency, 0.99),
                "ttft_p50_ms": percentile(w.ttft, 0.50),
                "ttft_p95_ms": percentile(w.ttft, 0.95),
                "prompt_tokens": w.prompt,
                "completion_tokens": w.completion,
                "total_tokens": w.prompt + w.completion,
                "last_seen": _iso(p.last_seen),
                "last_error": _last_error(p.last_error),
                "credentials": creds.get(provider, dict.fromkeys(("total", *CREDENTIAL_STATES), 0)),
                "lifetime": {**_totals(_lifetime(p)), "retries": p.retries},
                # lifetime attempts by the client's dialect (chat, messages, responses)
                "dialects": dict(p.dialects),
                "quota": dict((quotas or {}).get(provider, {})),
            }
        return out

    def dialects(self, provider: str) -> dict[str, int]:
        """A provider's lifetime attempts by the client's dialect."""
        p = self._providers.get(provider)
        return dict(p.dialects) if p is not None else {}

    def series(self, provider: str) -> dict[str, list[Any]]:
        """A provider's window slice by slice, oldest first (for the status page's charts):
        requests, failures, 429s and tokens per slice, and each slice's p50 latency in ms
        (None for a slice without traffic)."""
        p = self._providers.get(provider)
        current = int(self.clock() // self._slice_seconds)
        by_epoch = {s.epoch: s for s in p.slices} if p is not None else {}
        out: dict[str, list[Any]] = {
            "requests": [], "failures": [], "rate_limited": [], "tokens": [], "latency_p50_ms": []
        }  # fmt: skip
        for epoch in range(current - SLICES + 1, current + 1):
            s = by_epoch.get(epoch, _NEVER)
            n = sum(s.statuses)
            out["requests"].append(n)
            out["failures"].append(n - s.statuses[0])
            out["rate_limited"].append(s.statuses[3])
            out["tokens"].append(s.prompt + s.completion)
            out["latency_p50_ms"].append(percentile(s.latency, 0.50))
        return out

    @property
    def slice_seconds(self) -> float:
        return self._slice_seconds

    # -- sharing (proxy/state/): one deployment's metrics from every process's ------------

    def export(self) -> bytes:
        """Everything counted here, for other processes to `absorb` (JSON, sparse buckets).

        Runs every second with shared state: a past slice no longer changes, so its packed
        form is kept (only the current slice and the folded totals are packed anew)."""
        current = int(self.clock() // self._slice_seconds)
        cache = self._packed
        if cache is None or cache[0] != self._slice_seconds:
            cache = self._packed = (self._slice_seconds, {})
        packed = cache[1]
        providers = {}
        for name, p in self._providers.items():
            slices = []
            for s in p.slices:
                if s is _NEVER:
                    continue
                if s.epoch >= current:
                    slices.append(_pack(s))
                    continue
                done = packed.get((name, s.epoch))
                if done is None:
                    done = packed[(name, s.epoch)] = _pack(s)
                slices.append(done)
            providers[name] = {
                "slices": slices,
                "folded": _pack(p.folded),
                "retries": p.retries,
                "last_seen": p.last_seen,
                "last_error": p.last_error,
            }
        for key in [k for k in packed if k[1] <= current - SLICES]:
            del packed[key]  # out of the window: recycled into the folded totals
        return orjson.dumps({"slice_seconds": self._slice_seconds, "providers": providers})

    def absorb(self, exported: bytes) -> None:
        """Add another process's `export` into these counts (a deployment-wide view is a
        fresh `ProviderMetrics` that absorbs every process's export)."""
        data = orjson.loads(exported)
        same_slices = data.get("slice_seconds") == self._slice_seconds
        for name, theirs in data.get("providers", {}).items():
            p = self._providers.get(name)
            if p is None:
                p = self._providers[name] = _Provider()
            p.folded.merge(_unpack(theirs["folded"]))
            for packed in theirs["slices"]:
                counts = _unpack(packed)
                i = counts.epoch % SLICES
                mine = p.slices[i]
                if not same_slices:  # another window length: only lifetime totals agree
                    p.folded.merge(counts)
                elif mine.epoch == counts.epoch:
                    mine.merge(counts)
                elif mine.epoch < counts.epoch:
                    p.folded.merge(mine)
                    p.slices[i] = counts
                else:
                    p.folded.merge(counts)
            p.retries += theirs["retries"]
            seen = theirs["last_seen"]
            if seen is not None and (p.last_seen is None or seen > p.last_seen):
                p.last_seen = seen
            error = theirs["last_error"]
            if error is not None and (p.last_error is None or error[0] > p.last_error[0]):
                p.last_error = (error[0], error[1], error[2])

    def lifetime(self, provider: str) -> tuple[_Counts, int]:
        """A provider's lifetime counts and retries (zeros when it has had no traffic)."""
        p = self._providers.get(provider)
        return (_lifetime(p), p.retries) if p is not None else (_Counts(), 0)


def _sparse(counts: list[int]) -> list[tuple[int, int]]:
    return [(i, n) for i, n in enumerate(counts) if n]


def _pack(c: _Counts) -> list[Any]:
    sparse = _sparse
    return [c.epoch, c.statuses, sparse(c.latency), sparse(c.ttft), c.latency_sum, c.ttft_sum,
            c.prompt, c.completion]  # fmt: skip


def _unpack(packed: list[Any]) -> _Counts:
    c = _Counts(packed[0])
    c.statuses = list(packed[1])
    for i, n in packed[2]:
        c.latency[i] = n
    for i, n in packed[3]:
        c.ttft[i] = n
    c.latency_sum, c.ttft_sum, c.prompt, c.completion = packed[4:8]
    return c


def _lifetime(p: _Provider) -> _Counts:
    total = _Counts()
    total.merge(p.folded)
    for s in p.slices:
        total.merge(s)
    return total


def _totals(c: _Counts) -> dict[str, Any]:
    n = sum(c.statuses)
    return {
        "request_count": n,
        "success_count": c.statuses[0],
        "failure_count": n - c.statuses[0],
        "status_counts": dict(zip(STATUS_CLASSES, c.statuses, strict=True)),
        "prompt_tokens": c.prompt,
        "completion_tokens": c.completion,
        "total_tokens": c.prompt + c.completion,
    }


def percentile(buckets: list[int], q: float) -> float | None:
    """The q-quantile (nearest rank) of bucketed ms values, interpolated inside its bucket."""
    n = sum(buckets)
    if not n:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    for i, count in enumerate(buckets):
        if seen + count >= rank:
            low = BOUNDS_MS[i - 1] if i else 0.0
            high = BOUNDS_MS[min(i, len(BOUNDS_MS) - 1)]
            return round(low + (high - low) * (rank - seen) / count, 1)
        seen += count
    raise AssertionError("unreachable: rank <= n")


def _last_error(error: tuple[float, int, str] | None) -> dict[str, Any] | None:
    if error is None:
        return None
    at, status, message = error
    return {"at": _iso(at), "status": status, "message": REDACTOR.redact(message)}


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class _PrometheusView(Collector):
    """Renders lifetime totals and credential states when `/metrics` is scraped."""

    def __init__(
        self,
        metrics: ProviderMetrics,
        configured: Callable[[], Mapping[str, str]],
        credentials: Callable[[], Iterable[CredentialView]],
        quotas: Callable[[], Mapping[str, Mapping[str, Any]]] = dict,
    ) -> None:
        self._metrics = metrics
        self._configured = configured
        self._credentials = credentials
        self._quotas = quotas

    def collect(self) -> Iterator[Metric]:
        configured = self._configured()
        r = REDACTOR.redact
        requests = CounterMetricFamily(
            "keyrail_upstream_requests",
            "Upstream attempts by provider block and status class.",
            labels=("provider", "driver", "status_class"),
        )
        latency = HistogramMetricFamily(
            "keyrail_upstream_latency_seconds",
            "Upstream attempt duration, to the end of the answer.",
            labels=("provider",),
        )
        ttft = HistogramMetricFamily(
            "keyrail_upstream_ttft_seconds",
            "Time to the first streamed byte of an upstream attempt.",
            labels=("provider",),
        )
        tokens = CounterMetricFamily(
            "keyrail_tokens", "Tokens the upstreams reported.", labels=("provider", "direction")
        )
        retries = CounterMetricFamily(
            "keyrail_upstream_retries",
            "Attempts that were not the first of their client request.",
            labels=("provider",),
        )
        by_dialect = CounterMetricFamily(
            "keyrail_upstream_requests_by_dialect",
            "Upstream attempts by provider block and the client's dialect "
            "(chat, messages, responses).",
            labels=("provider", "dialect"),
        )
        for provider, driver in configured.items():
            p, d = r(provider), r(driver)
            for dialect, count in sorted(self._metrics.dialects(provider).items()):
                by_dialect.add_metric([p, dialect], count)
            c, n = self._metrics.lifetime(provider)
            for status_class, count in zip(STATUS_CLASSES, c.statuses, strict=True):
                requests.add_metric([p, d, status_class], count)
            latency.add_metric([p], _buckets(c.latency), c.latency_sum)
            ttft.add_metric([p], _buckets(c.ttft), c.ttft_sum)
            tokens.add_metric([p, "prompt"], c.prompt)
            tokens.add_metric([p, "completion"], c.completion)
            retries.add_metric([p], n)
        states = GaugeMetricFamily(
            "keyrail_credentials",
            "Credentials by provider block and state.",
            labels=("provider", "state"),
        )
        counts = {(p, s): 0 for p in configured for s in CREDENTIAL_STATES}
        for view in self._credentials():
            if (view.provider, view.state) in counts:
                counts[view.provider, view.state] += 1
        for (provider, state), count in counts.items():
            states.add_metric([r(provider), state], count)
        yield from (requests, by_dialect, latency, ttft, tokens, retries, states)
        yield from self._quota_families(configured)

    def _quota_families(self, configured: Mapping[str, str]) -> Iterator[Metric]:
        r = REDACTOR.redact
        labels = ("provider", "credential")
        used = GaugeMetricFamily(
            "keyrail_quota_used",
            "A credential's quota used, as its driver last read it.",
            labels=labels,
        )
        limit = GaugeMetricFamily(
            "keyrail_quota_limit", "A credential's quota allowance.", labels=labels
        )
        resets = GaugeMetricFamily(
            "keyrail_quota_resets_at_seconds",
            "When a credential's quota resets (Unix time).",
            labels=labels,
        )
        for provider, by_credential in self._quotas().items():
            if provider not in configured:
                continue
            for cid, q in by_credential.items():
                if "used" not in q:
                    continue  # no successful reading yet
                key = [r(provider), r(cid)]
                used.add_metric(key, q["used"])
                limit.add_metric(key, q["limit"])
                if q.get("resets_at_unix") is not None:
                    resets.add_metric(key, q["resets_at_unix"])
        yield from (used, limit, resets)


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Cumulative Prometheus buckets (seconds) from the fine per-bucket counts."""
    out: list[tuple[str, float]] = []
    cumulative = 0
    fine = 0
    for bound in PROMETHEUS_BOUNDS_MS:
        stop = bucket_of(bound) + 1  # fine buckets at or below this bound
        cumulative += sum(counts[fine:stop])
        fine = stop
        out.append((f"{bound / 1000:g}", cumulative))
    out.append(("+Inf", cumulative + sum(counts[fine:])))
    return out


def setup(app: web.Application, wrap: Wrap) -> None:
    """`GET /v1/metrics/providers` and `GET /metrics`, each handler inside `wrap` (the
    pipeline). With shared state (proxy/state/) both answer for every process of the
    deployment; `?scope=local` answers for this process alone. And `GET /v1/metrics/clients`
    (the clients' usage, in the same scope; limits as the limit store counts them, which is
    deployment-wide with shared state)."""
    # keys.py, the pipeline and the clients' usage import this module
    from proxy.clients.keys import Client
    from proxy.clients.usage import ClientCollector, ClientUsage
    from proxy.http.pipeline import ACCESS
    from proxy.keys import CLIENT_USAGE, LIMITS, LIVE, QUOTAS, SCHEDULER, STATE

    def configured() -> dict[str, str]:
        """Every configured block (provider → driver), with traffic or not."""
        return {b.name: b.driver for b in app[LIVE].current.settings.providers}

    def clients() -> tuple[Client, ...]:
        return app[LIVE].current.client_keys.clients

    quotas = app[QUOTAS].by_provider

    async def client_totals(request: web.Request) -> ClientUsage:
        """The clients' usage to answer with: every process's, or this one's (as `counted`)."""
        local = app[CLIENT_USAGE]
        state = app[STATE]
        if _local_scope(request) or not state.shared:
            return local
        peers = await state.peers("clients")
        if peers is None:
            return local
        view = ClientUsage(local.clock)
        view.absorb(local.export())
        for exported in peers:
            view.absorb(exported)
        return view

    async def providers(request: web.Request) -> web.Response:
        fmt = request.query.get("format", "")
        if fmt not in ("", "list"):
            raise InvalidRequest("'format' must be 'list' or absent.", param="format")
        view, scope = await counted(app, request)
        snapshot = view.snapshot(app[SCHEDULER].credential_views(), configured(), quotas())
        data: Any = {"object": "list", "data": list(snapshot.values())} if fmt else snapshot
        return web.Response(
            body=orjson.dumps(data, option=orjson.OPT_INDENT_2),
            content_type="application/json",
            headers={SCOPE_HEADER: scope},
        )

    async def client_usage(request: web.Request) -> web.Response:
        """`/v1/metrics/clients`: every named client (only its own for a named client's key)."""
        fmt = request.query.get("format", "")
        if fmt not in ("", "list"):
            raise InvalidRequest("'format' must be 'list' or absent.", param="format")
        asking = request[ACCESS].client
        usage, limits = await client_totals(request), app[LIMITS]
        scope = "local" if usage is app[CLIENT_USAGE] else "deployment"
        snapshot = {}
        for client in clients():
            if asking is None or asking.name == client.name:
                snapshot[client.name] = {
                    **usage.of(client.name),
                    "limits": await limits.view(client),
                    "models_allowed": list(client.models) or ["*"],
                }
        data: Any = {"object": "list", "data": list(snapshot.values())} if fmt else snapshot
        return web.Response(
            body=orjson.dumps(data, option=orjson.OPT_INDENT_2),
            content_type="application/json",
            headers={SCOPE_HEADER: scope},
        )

    async def prometheus(request: web.Request) -> web.Response:
        view, scope = await counted(app, request)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(
            _PrometheusView(view, configured, app[SCHEDULER].credential_views, quotas)
        )
        usage = await client_totals(request)
        registry.register(ClientCollector(usage, lambda: [c.name for c in clients()]))
        body = generate_latest(registry)
        return web.Response(
            body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, SCOPE_HEADER: scope}
        )

    app.router.add_get("/v1/metrics/providers", wrap(providers))
    app.router.add_get("/v1/metrics/clients", wrap(client_usage))
    app.router.add_get("/metrics", wrap(prometheus))


async def counted(app: web.Application, request: web.Request) -> tuple[ProviderMetrics, str]:
    """The provider metrics to answer `request` with, and their scope: every process that
    shares state ("deployment"), or this one ("local": `?scope=local`, no shared state, or
    Redis away). For the metrics endpoints and the status page."""
    from proxy.keys import METRICS, STATE  # keys.py imports this module

    local = app[METRICS]
    state = app[STATE]
    if _local_scope(request) or not state.shared:
        return local, "local"
    peers = await state.peers("metrics")
    if peers is None:  # Redis is away: what this process knows
        return local, "local"
    view = ProviderMetrics(local.window_seconds, local.clock)
    view.absorb(local.export())
    for exported in peers:
        view.absorb(exported)
    return view, "deployment"


def _local_scope(request: web.Request) -> bool:
    """`?scope=local`: this process alone; absent or `deployment`: every process sharing state."""
    scope = request.query.get("scope", "")
    if scope not in ("", "local", "deployment"):
        raise InvalidRequest("'scope' must be 'local' or 'deployment'.", param="scope")
    return scope == "local"


#: Which processes a metrics answer counts: "deployment" (all that share the state) or "local".
SCOPE_HEADER = "X-Keyrail-Metrics-Scope"
