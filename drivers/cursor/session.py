"""One Cursor turn: the open stream, the server's requests answered, the output queued.

Owns: the pump (reads the channel, decodes envelopes, answers blob reads and writes, the
request-context query with the client's tools, refuses Cursor's built-in file/shell/fetch
tools, forgets a tool call Cursor withdraws (`exec_server_control_message` abort), and queues
what the client should see: text, reasoning, token counts, heartbeats, MCP
tool calls, the end or the error), the client heartbeat every few seconds, and parking: a turn
that asked for a client tool stays open (pump and heartbeats running) so the client's next
request, carrying the tool results, continues it (`Parked`, keyed by tool-call id, bounded in
number and age).
Does not own: opening the channel (transport.py), the OpenAI side (driver.py, request.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from drivers.cursor import messages as m
from drivers.cursor.connect import ConnectError, Decoder, FrameError
from drivers.cursor.request import ToolResult
from drivers.cursor.transport import Channel, TransportFailed
from drivers.cursor.wire import Fields, WireError

log = logging.getLogger("keyrail.cursor")

#: Blobs the server may store with `set_blob_args` in one turn (bytes); more are refused.
BLOB_BUDGET = 8 * 1024 * 1024
#: A turn whose stream brings no frame at all (not even Cursor's heartbeat) for this long is
#: aborted, as the community client does: this also covers a turn parked for tool results,
#: which keyrail's idle watchdog does not see (no client is reading it).
SILENCE_SECONDS = 90.0
#: Output events queued ahead of the client (back-pressure beyond: the pump waits).
QUEUE_SIZE = 256


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Ended:
    """The turn is over (turn_ended, end-of-stream, or the stream closed)."""


Output = m.Text | m.Thinking | m.Tokens | m.Heartbeat | ToolCall | Ended | BaseException
_FAILURES = (ConnectError, FrameError, WireError, TransportFailed)


class Turn:
    def __init__(
        self,
        channel: Channel,
        *,
        blobs: dict[str, bytes],
        tools: Sequence[m.Tool],
        heartbeat_seconds: float,
        silence_seconds: float = SILENCE_SECONDS,
    ) -> None:
        self.channel = channel
        self.blobs = blobs
        self.tools = list(tools)
        self.output: asyncio.Queue[Output] = asyncio.Queue(QUEUE_SIZE)
        self.pending: dict[str, tuple[int, str]] = {}  # tool call id → (exec id, exec key)
        self.asked: list[str] = []  # every tool call id handed out (withdrawn ones included)
        self.done = False
        self._blob_bytes = sum(map(len, blobs.values()))
        self._heartbeat_seconds = heartbeat_seconds
        self._silence_seconds = silence_seconds
        self._tasks: list[asyncio.Task[None]] = []  # the pump, the heartbeats
        self._held: list[Output] = []  # read ahead by `queued()` and put back
        self._closing: asyncio.Task[None] | None = None
        #: called when Cursor answers `unauthenticated` (drops the token so it is renewed)
        self.on_unauthenticated: Callable[[], None] = lambda: None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._pump()), loop.create_task(self._heartbeats())]

    async def next(self) -> Output:
        if self._held:
            return self._held.pop()
        return await self.output.get()

    def queued(self) -> Output | None:
        if self._held:
            return self._held.pop()
        try:
            return self.output.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def put_back(self, item: Output) -> None:
        """Undo `queued()`: the item is the next one read again (order kept)."""
        self._held.append(item)

    async def answer_tools(self, results: Sequence[ToolResult]) -> int:
        """Send the client's tool results for calls this turn waits on; how many matched."""
        sent = 0
        for result in results:
            waiting = self.pending.pop(result.call_id, None)
            if waiting is not None:
                await self.channel.send(m.mcp_result(waiting[0], waiting[1], result.content))
                sent += 1
        return sent

    # -- ending --------------------------------------------------------------------------------

    def abort(self) -> None:
        """The client left mid-turn: reset the stream now, stop the tasks."""
        if self.done:
            return
        self.done = True
        self.channel.reset()
        for task in self._tasks:
            task.cancel()

    def finish(self) -> None:
        """The turn ended: stop the heartbeats now; release the stream once the pump has seen
        the server's end (bounded), in the background, so the client's answer ends at once."""
        if self.done:
            return
        self.done = True
        for task in self._tasks[1:]:
            task.cancel()
        self._closing = asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        pump = self._tasks[0] if self._tasks else None
        if pump is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(5):
                    await asyncio.shield(pump)
            pump.cancel()
        await self.channel.close()

    # -- the tasks -----------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        with contextlib.suppress(*_FAILURES):
            while True:
                await asyncio.sleep(self._heartbeat_seconds)
                await self.channel.send(m.heartbeat())

    async def _pump(self) -> None:
        decoder = Decoder()
        try:
            while True:
                try:
                    async with asyncio.timeout(self._silence_seconds):
                        data = await self.channel.receive()
                except TimeoutError:
                    raise TransportFailed(
                        f"Cursor sent no frame for {self._silence_seconds:g} s"
                    ) from None
                if not data:
                    if decoder.pending:
                        raise FrameError("the stream ended inside a frame")
                    break
                for payload in decoder.feed(data):
                    for event in m.parse_server(payload):
                        await self._handle(event)
                if decoder.ended:
                    break
            await self.output.put(Ended())
        except _FAILURES as exc:
            await self.output.put(exc)

    async def _handle(self, event: m.ServerEvent) -> None:
        send = self.channel.send
        if isinstance(event, m.GetBlob):
            await send(m.blob_result(event.kv_id, self.blobs.get(event.blob_id.hex())))
        elif isinstance(event, m.SetBlob):
            if self._blob_bytes + len(event.data) <= BLOB_BUDGET:
                self.blobs[event.blob_id.hex()] = event.data
                self._blob_bytes += len(event.data)
            await send(m.set_blob_result(event.kv_id))
        elif isinstance(event, m.Exec):
            await self._exec(event)
        elif isinstance(event, m.ExecAbort):
            # Cursor withdrew a request: a client tool call it made is no longer awaited, so
            # its result, if the client sends one, is not passed on
            for call_id in [c for c, (e, _) in self.pending.items() if e == event.exec_id]:
                del self.pending[call_id]
        elif isinstance(event, m.TurnEnded):
            await self.output.put(Ended())
        elif isinstance(event, m.Text | m.Thinking | m.Tokens | m.Heartbeat):
            await self.output.put(event)

    async def _exec(self, event: m.Exec) -> None:
        if event.kind == m.REQUEST_CONTEXT:
            await self.channel.send(
                m.request_context_result(event.exec_id, event.exec_key, self.tools)
            )
        elif event.kind == m.MCP:
            call = m.mcp_call(event.args)
            self.pending[call.call_id] = (event.exec_id, event.exec_key)
            self.asked.append(call.call_id)
            await self.output.put(ToolCall(call.call_id, call.name, call.arguments))
        elif event.kind in m.BUILTIN_TOOLS:
            log.info("cursor asked to run a built-in tool (field %d): refused", event.kind)
            args = Fields(event.args)
            await self.channel.send(m.refusal(event.exec_id, event.exec_key, event.kind, args))


class Parked:
    """Turns waiting for the client's tool results, by tool-call id (bounded, 5 min TTL)."""

    def __init__(self, *, ttl: float = 300.0, limit: int = 256) -> None:
        self._ttl = ttl
        self._limit = limit
        self._turns: dict[str, tuple[Turn, float]] = {}

    def park(self, turn: Turn) -> None:
        self._expire()
        # a turn nobody comes back for is dropped when its time is up, not on the next call
        asyncio.get_running_loop().call_later(self._ttl + 0.01, self._expire)
        now = time.monotonic()
        for call_id in turn.asked:  # not only `pending`: Cursor may have withdrawn a call
            self._turns[call_id] = (turn, now)
        while len({id(t) for t, _ in self._turns.values()}) > self._limit:
            oldest = next(iter(self._turns))
            self._drop(self._turns[oldest][0])

    def take(self, results: Sequence[ToolResult]) -> Turn | None:
        """The parked turn these results answer (removed from the park), if any."""
        self._expire()
        for result in results:
            entry = self._turns.get(result.call_id)
            if entry is not None and not entry[0].done:
                turn = entry[0]
                for key in [k for k, (t, _) in self._turns.items() if t is turn]:
                    del self._turns[key]
                return turn
        return None

    def _expire(self) -> None:
        cutoff = time.monotonic() - self._ttl
        for turn in {t for t, when in self._turns.values() if when < cutoff or t.done}:
            self._drop(turn)

    def _drop(self, turn: Turn) -> None:
        for key in [k for k, (t, _) in self._turns.items() if t is turn]:
            del self._turns[key]
        turn.abort()

    def close(self) -> None:
        for turn in {t for t, _ in self._turns.values()}:
            turn.abort()
        self._turns.clear()
