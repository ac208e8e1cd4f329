"""What keyrail processes share: credential cooldowns and metrics, through Redis or not at all.

`open_state(url)` gives the backend `state:` names. `LocalState` (`state: memory`, the
default) shares nothing and costs nothing. `RedisState` (`state: redis://…`):

- Cooldowns and disables: the scheduler stays synchronous on its local state and reports each
  change (`Scheduler.on_change`); this backend queues it, then in the background writes it
  as a Redis key that expires when the cooldown ends and publishes it on one channel. Every
  other process hears it within milliseconds and merges it (`Scheduler.apply`). Nothing on a
  request's path waits for Redis.
- Metrics: every second each process writes its counts (`ProviderMetrics.export`, and any
  other part's export given to `share`, e.g. the clients' usage) under its own key (expiring
  a window after its last write); a metrics request reads the others' and adds them up.
- Sticky sessions: a binding made here is published, and one made elsewhere merged, so a
  conversation stays on its credential whichever process serves its next turn.
- Client-limit counters: `limits` is the backend's `LimitStore` (base.py): in memory, or in
  Redis (redis_limits.py) on the same connection.
- Losing Redis never fails a request: the scheduler and metrics are local anyway. The backend
  logs one warning, retries with backoff (0.5 s doubling to 30 s), and when Redis answers
  again it merges both ways: its running cooldowns are written and published again, and the
  keys written meanwhile are read back. Every command is bounded by `timeout` seconds
  (`?socket_timeout=` in the URL overrides it), so a slow Redis is a lost one.

Owns: the connection, its health, the key and channel layout (`NAMESPACE:cool:…`,
`NAMESPACE:disable:…`, `NAMESPACE:KIND:INSTANCE`, channel `NAMESPACE:changes`).
Does not own: what a cooldown is (scheduler.py), what is counted (metrics.py), the meaning of
the limit counters (base.py, proxy/clients/).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from proxy.clients.affinity import Conversations
from proxy.metrics import ProviderMetrics
from proxy.redact import url_label
from proxy.scheduler import COOL, DISABLE, Change, Scheduler
from proxy.state.base import LimitStore
from proxy.state.memory import MemoryLimitStore
from proxy.state.redis_limits import RedisLimitStore

log = logging.getLogger("keyrail.state")
NAMESPACE = "keyrail"
TIMEOUT = 0.5  # seconds any one Redis command may take
PUSH_SECONDS = 1.0  # how often metrics are written for the others
FIRST_RETRY, MAX_RETRY = 0.5, 30.0
OUTBOX_LIMIT = 10_000  # changes waiting to be written; the oldest go first when it is full


class LocalState:
    """`state: memory`: this process keeps everything to itself."""

    url = "memory"
    shared = False

    def __init__(self) -> None:
        #: client-limit counters (proxy/clients/limits.py takes them from here)
        self.limits: LimitStore = MemoryLimitStore()

    @property
    def healthy(self) -> bool:
        return True

    def attach(self, scheduler: Scheduler, metrics: ProviderMetrics) -> None:
        """The parts whose state this backend shares (none, here)."""

    def attach_bindings(self, conversations: Conversations) -> None:
        """Sticky sessions' bindings, to share (none, here)."""

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def share(self, kind: str, export: Callable[[], bytes]) -> None:
        """Share what `export` gives (written every second) as `kind`; others read it with
        `peers(kind)`. Metrics are "metrics"; the clients' usage is "clients"."""

    async def peers(self, kind: str) -> list[bytes] | None:
        """The other processes' exports of `kind`; None when they cannot be had right now."""
        return None


class RedisState(LocalState):
    """`state: redis://…`: cooldowns and metrics shared with every process on that Redis."""

    shared = True

    def __init__(
        self,
        url: str,
        *,
        namespace: str = NAMESPACE,
        timeout: float = TIMEOUT,
        push_seconds: float = PUSH_SECONDS,
        instance: str | None = None,
    ) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        super().__init__()
        self.url = url
        self.namespace = namespace
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.push_seconds = push_seconds
        # No retries inside redis-py: a failed command is a lost Redis, handled here once.
        self.client = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self.limits = RedisLimitStore(
            self.client, namespace=namespace, healthy=lambda: self.healthy
        )
        self._channel = f"{namespace}:changes"
        self._scheduler: Scheduler | None = None
        self._metrics: ProviderMetrics | None = None
        self._exports: dict[str, Callable[[], bytes]] = {}
        self._outbox: deque[Change] = deque(maxlen=OUTBOX_LIMIT)
        self._binds: deque[tuple[str, str, str]] = deque(maxlen=OUTBOX_LIMIT)
        self._conversations: Conversations | None = None
        self._wake = asyncio.Event()
        self._healthy = False
        self._task: asyncio.Task[None] | None = None
        #: set each time a connection has merged and serves (tests and start-up wait on it)
        self.connected = asyncio.Event()
        self.merges = 0  # how many times a (re)connection merged state

    @property
    def healthy(self) -> bool:
        return self._healthy

    def attach(self, scheduler: Scheduler, metrics: ProviderMetrics) -> None:
        self._scheduler, self._metrics = scheduler, metrics
        scheduler.on_change = self._changed
        self.share("metrics", metrics.export)

    def attach_bindings(self, conversations: Conversations) -> None:
        """A binding made here is published; one published elsewhere is merged. Bindings are
        soft state: no key in Redis, so a process that (re)connects learns them as the
        conversations come back."""
        self._conversations = conversations
        conversations.on_bind = self._bound

    def _bound(self, pool: str, conversation: str, credential_id: str) -> None:
        if self._healthy:
            self._binds.append((pool, conversation, credential_id))
            self._wake.set()

    def _changed(self, change: Change) -> None:
        """The scheduler's hook: queue the change (no I/O here, on the request's path)."""
        if self._healthy:  # while Redis is away, the merge on its return sends the state
            self._outbox.append(change)
            self._wake.set()

    async def start(self, wait: float = 2 * TIMEOUT) -> None:
        """Connect in the background; wait briefly for the first merge (never fails)."""
        self._task = asyncio.create_task(self._run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), wait)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._healthy:
            with contextlib.suppress(Exception):  # its counts stay until they expire
                await self._push_metrics()
        with contextlib.suppress(Exception):
            await self.client.aclose()

    # -- the connection's life ---------------------------------------------------------------

    async def _run(self) -> None:
        from redis.exceptions import RedisError

        delay = FIRST_RETRY
        warned = False
        while True:
            try:
                await self._serve()
            except (RedisError, OSError, TimeoutError) as exc:
                was_healthy, self._healthy = self._healthy, False
                self.connected.clear()
                self._outbox.clear()
                self._binds.clear()
                if was_healthy or not warned:
                    log.warning(
                        "state: Redis at %s is unreachable (%s); serving from local state and "
                        "retrying", url_label(self.url), type(exc).__name__,
                    )  # fmt: skip
                    warned = True
                    delay = FIRST_RETRY
                else:
                    log.debug("state: Redis still unreachable (%s)", exc)
            await asyncio.sleep(delay)  # backoff between reconnection attempts
            delay = min(delay * 2, MAX_RETRY)

    async def _serve(self) -> None:
        """One connection: subscribe, merge both ways, then relay changes until it fails."""
        await self.client.ping()
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            merged = await self._merge()
            self._healthy = True
            self.merges += 1
            log.log(
                logging.INFO if self.merges > 1 else logging.DEBUG,
                "state: Redis at %s serves shared state (merged %d cooldowns)",
                url_label(self.url), merged,
            )  # fmt: skip
            self.connected.set()
            jobs = [
                asyncio.create_task(self._listen(pubsub)),
                asyncio.create_task(self._write_changes()),
                asyncio.create_task(self._push_metrics_every()),
            ]
            try:  # until one of them fails: its error is the connection's
                done, _ = await asyncio.wait(jobs, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for job in jobs:
                    job.cancel()
                await asyncio.gather(*jobs, return_exceptions=True)
            for job in done:
                job.result()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _merge(self) -> int:
        """Send what this process knows (it may have cooled keys while Redis was away), then
        read back what the others wrote."""
        scheduler = self._scheduler
        if scheduler is None:
            return 0
        await self._write(scheduler.shared_states())
        keys = [key async for key in self.client.scan_iter(match=f"{self.namespace}:cool:*")]
        keys += [key async for key in self.client.scan_iter(match=f"{self.namespace}:disable:*")]
        merged = 0
        for start in range(0, len(keys), 500):
            for value in await self.client.mget(keys[start : start + 500]):
                if value is not None:
                    scheduler.apply(_change_from(orjson.loads(value)))
                    merged += 1
        await self._push_metrics()
        return merged

    async def _listen(self, pubsub: Any) -> None:
        scheduler = self._scheduler
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None or scheduler is None:
                continue
            data = orjson.loads(message["data"])
            if data.get("from") == self.instance:
                continue
            if "change" in data:
                scheduler.apply(_change_from(data["change"]))
            elif "bind" in data and self._conversations is not None:
                pool, conversation, credential_id = data["bind"]
                self._conversations.merge(str(pool), str(conversation), str(credential_id))

    async def _write_changes(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = list(self._outbox)
            self._outbox.clear()
            if batch:
                await self._write(batch)
            binds = list(self._binds)
            self._binds.clear()
            if binds:
                pipe = self.client.pipeline(transaction=False)
                for bind in binds:
                    message = {"from": self.instance, "bind": bind}
                    pipe.publish(self._channel, orjson.dumps(message))
                await pipe.execute()

    async def _write(self, changes: list[Change]) -> None:
        """Each change as a key that lives as long as the state, and as a message."""
        if not changes:
            return
        wall = _wall()
        pipe = self.client.pipeline(transaction=False)
        for change in changes:
            key = self._key(change)
            if change.kind in (COOL, DISABLE):
                ttl_ms = int((change.until - wall) * 1000)
                if ttl_ms <= 0:
                    continue
                pipe.set(key, orjson.dumps(_change_data(change)), px=ttl_ms)
            else:
                pipe.delete(key)
            message = {"from": self.instance, "change": _change_data(change)}
            pipe.publish(self._channel, orjson.dumps(message))
        await pipe.execute()

    def _key(self, change: Change) -> str:
        if change.kind in (DISABLE, "clear-disable"):
            return f"{self.namespace}:disable:{change.credential_id}"
        return f"{self.namespace}:cool:{change.credential_id}\n{change.model}"

    # -- metrics: every process's counts, summed where they are read -------------------------

    def share(self, kind: str, export: Callable[[], bytes]) -> None:
        self._exports[kind] = export

    async def _push_metrics_every(self) -> None:
        while True:
            await asyncio.sleep(self.push_seconds)  # a period, not a synchronisation
            await self._push_metrics()

    async def _push_metrics(self) -> None:
        """Each shared export under `NAMESPACE:KIND:INSTANCE`, kept for a window after the
        process last wrote it (a stopped process's counts leave the window as they age)."""
        if not self._exports:
            return
        window = self._metrics.window_seconds if self._metrics is not None else 600
        ttl = int(window) + 60
        pipe = self.client.pipeline(transaction=False)
        for kind, export in self._exports.items():
            pipe.set(self._export_key(kind, self.instance), export(), ex=ttl)
        await pipe.execute()

    def _export_key(self, kind: str, instance: str) -> str:
        return f"{self.namespace}:{kind}:{instance}"

    async def peers(self, kind: str) -> list[bytes] | None:
        from redis.exceptions import RedisError

        if not self._healthy:
            return None
        mine = self._export_key(kind, self.instance).encode()
        try:
            keys = [
                k
                async for k in self.client.scan_iter(match=f"{self.namespace}:{kind}:*")
                if k != mine
            ]
            values = await self.client.mget(keys) if keys else []
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("state: reading the other processes' %s failed (%s)", kind, exc)
            return None
        return [v for v in values if isinstance(v, bytes)]


def _wall() -> float:
    import time

    return time.time()


def _change_data(change: Change) -> list[Any]:
    return [change.kind, change.credential_id, change.model, change.until, change.reason,
            change.at]  # fmt: skip


def _change_from(data: list[Any]) -> Change:
    kind, cid, model, until, reason, at = data
    return Change(str(kind), str(cid), str(model), float(until), str(reason), float(at))


def open_state(url: str) -> LocalState:
    """The backend `state:` names: "memory", or a Redis URL."""
    if url == "memory":
        return LocalState()
    return RedisState(url)
