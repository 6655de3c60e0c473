"""asyncio yamux session: many streams over one message link (a WebSocket).

Streams never write to the link themselves: they queue bytes, and the session moves them
into frames as each stream's send window allows: control frames first, then a stream that
has just become ready (a new stream's SYN and preamble, a keystroke), then bulk in round
robin with a per-turn byte budget (`kuberde.mux.schedule`). It
does so at once, from the caller, while the link takes messages without waiting (saving
the task switches of waking a writer, which were most of a round trip through the mux);
otherwise its writer task does, whenever the link drains. Memory is therefore bounded per
stream by its window and its send buffer, and a stream whose peer stops reading pauses
only itself. Control replies are coalesced and capped (`kuberde.mux.control`), so a peer
that floods pings or opens refused streams without reading gets a protocol error instead
of an ever-growing queue.

Two ways to consume a stream: `await stream.read()` (buffered), or a `StreamSink` that gets
callbacks from the session's reader and acknowledges bytes with `stream.consumed(n)` once it
has handed them on. Sinks let a TCP bridge run on protocol callbacks with no per-chunk task
switch, which is where most of the throughput comes from.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from kuberde.mux.control import ControlLimits, ControlQueue
from kuberde.mux.frame import (
    HEADER_SIZE,
    Flag,
    Frame,
    FrameDecoder,
    FrameType,
    GoAwayCode,
    ProtocolError,
    encode_header,
)
from kuberde.mux.schedule import FairScheduler

__all__ = [
    "BULK_FRAME",
    "BULK_WINDOW",
    "INITIAL_WINDOW",
    "Link",
    "Session",
    "SessionClosed",
    "SessionConfig",
    "Stream",
    "StreamReset",
    "StreamSink",
]

log = logging.getLogger(__name__)

#: The yamux initial stream window; larger windows are granted by an update at open.
INITIAL_WINDOW = 256 * 1024
MAX_WINDOW = 16 * 1024 * 1024
_MAX_RESET_REASON = 1024
_SYN, _FIN, _RST = int(Flag.SYN), int(Flag.FIN), int(Flag.RST)


class Link(Protocol):
    """A reliable, ordered message transport — in practice a WebSocket."""

    async def send(self, data: bytes | bytearray) -> None:
        """Send one message; a bytearray is the link's from then on (it may mask it in place)."""
        ...

    @property
    def writable(self) -> bool:
        """A message given to `send_nowait` now would go out without waiting."""
        ...

    def send_nowait(self, data: bytearray) -> None:
        """Send one message at once; only while `writable` (the message is the link's)."""
        ...

    async def receive(self) -> bytes | None:
        """The next message, or None once the link is closed."""
        ...

    async def close(self, code: int, reason: str) -> None: ...


class StreamSink(Protocol):
    """Callback consumer of a stream's inbound bytes (see `Stream.set_sink`)."""

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> None: ...

    def stream_reset(self, error: StreamReset) -> None: ...


class StreamReset(ConnectionError):
    """The stream was reset by the peer, by us, or because its session ended."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SessionClosed(StreamReset):
    """The session is closed or going away; no new streams can be opened."""


#: Window and frame size for bulk data paths (gateway and agent): measured with `make bench`,
#: 4 MiB windows and 256 KiB frames move ~35 % more per CPU second than yamux's defaults.
#: It is also what one stalled reader can make the gateway hold for its stream.
BULK_WINDOW = 4 * 1024 * 1024
BULK_FRAME = 256 * 1024


@dataclass(frozen=True, slots=True)
class SessionConfig:
    receive_window: int = INITIAL_WINDOW
    max_message_size: int = 256 * 1024
    max_frame_payload: int = 64 * 1024
    send_buffer_limit: int = 256 * 1024
    keepalive_interval: float = 15.0
    keepalive_timeout: float = 30.0
    accept_backlog: int = 256
    control: ControlLimits = field(default_factory=ControlLimits)

    def __post_init__(self) -> None:
        if not INITIAL_WINDOW <= self.receive_window <= MAX_WINDOW:
            raise ValueError(
                f"receive_window must be between {INITIAL_WINDOW} and {MAX_WINDOW} bytes"
            )


class Stream:
    """One bidirectional byte stream inside a session."""

    def __init__(self, session: Session, stream_id: int, *, opened_locally: bool) -> None:
        self._session = session
        self.id = stream_id
        self.opened_locally = opened_locally
        self._window_size = session.config.receive_window
        # Inbound side.
        self._recv_credit = INITIAL_WINDOW
        self._unacked = 0
        self._recv_chunks: deque[bytes] = deque()
        self._recv_buffered = 0
        self._remote_fin = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._sink: StreamSink | None = None
        # Outbound side.
        self._send_window = INITIAL_WINDOW
        #: What `write` was given, kept as given: a frame's payload is sliced out of these
        #: without a copy, and the link message is the one join (DESIGN.md §9: copies of
        #: 256 KiB chunks are a visible share of the CPU per GB).
        self._send_chunks: deque[bytes | memoryview] = deque()
        self._send_size = 0
        self._local_fin = False
        self._fin_sent = False
        self._syn_pending = opened_locally
        self._drain_waiter: asyncio.Future[None] | None = None
        self._producer: tuple[Callable[[], None], Callable[[], None]] | None = None
        self._producer_paused = False
        #: Told every change of the bytes this stream holds (see `watch_held`).
        self._held_watcher: Callable[[int], None] | None = None
        self._held_reported = 0
        # Lifecycle.
        self._error: StreamReset | None = None
        self._closed = session.loop.create_future()

    def __repr__(self) -> str:
        return f"<Stream {self.id} session={self._session.name}>"

    # ---- reading -------------------------------------------------------------------------

    async def read(self, max_bytes: int = -1) -> bytes:
        """Return up to `max_bytes` buffered bytes (all if -1); b"" at end of stream."""
        while not self._recv_buffered:
            if self._error is not None:
                raise self._error
            if self._remote_fin:
                return b""
            self._read_waiter = self._session.loop.create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        if max_bytes < 0 or max_bytes >= self._recv_buffered:
            data = b"".join(self._recv_chunks)
            self._recv_chunks.clear()
        else:
            data = self._take_chunks(max_bytes)
        self._recv_buffered -= len(data)
        self._note_held()
        self.consumed(len(data))
        return data

    def _take_chunks(self, size: int) -> bytes:
        parts: list[bytes] = []
        needed = size
        while needed:
            chunk = self._recv_chunks.popleft()
            if len(chunk) > needed:
                self._recv_chunks.appendleft(chunk[needed:])
                chunk = chunk[:needed]
            parts.append(chunk)
            needed -= len(chunk)
        return b"".join(parts)

    def set_sink(self, sink: StreamSink) -> None:
        """Deliver inbound bytes to `sink` from now on; it must call `consumed` for each."""
        self._sink = sink
        if self._recv_chunks:
            data = b"".join(self._recv_chunks)
            self._recv_chunks.clear()
            self._recv_buffered = 0
            self._note_held()
            sink.data_received(data)
        if self._error is not None:
            sink.stream_reset(self._error)
        elif self._remote_fin:
            sink.eof_received()

    def consumed(self, size: int) -> None:
        """Return `size` bytes of receive window to the peer (batched to half a window)."""
        if self._remote_fin or self._error is not None:
            return
        self._unacked += size
        if self._unacked >= self._window_size // 2:
            self._session._send_window_update(self, self._unacked)
            self._recv_credit += self._unacked
            self._unacked = 0

    # ---- writing -------------------------------------------------------------------------

    def write(self, data: bytes | memoryview) -> None:
        """Queue `data` (not copied: a caller must not change it afterwards); it leaves as
        the peer's window allows. Use `drain` for backpressure."""
        if self._error is not None:
            raise self._error
        if self._local_fin:
            raise StreamReset("write after close_write")
        if not data:
            return
        self._send_chunks.append(data)
        self._send_size += len(data)
        self._note_held()
        self._session._schedule(self)
        if (
            self._producer is not None
            and not self._producer_paused
            and self._send_size > self._session.config.send_buffer_limit
        ):
            self._producer_paused = True
            self._producer[0]()

    async def drain(self) -> None:
        """Wait until the send buffer is below its limit (or raise if the stream died)."""
        while self._send_size > self._session.config.send_buffer_limit:
            if self._error is not None:
                raise self._error
            self._drain_waiter = self._session.loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self._error is not None:
            raise self._error

    def set_producer(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        """Callbacks to pause/resume whoever feeds `write` (e.g. a transport's reading)."""
        self._producer = (pause, resume)

    def watch_held(self, watcher: Callable[[int], None]) -> None:
        """Tell `watcher` every change (a delta) of the bytes this stream holds: its send
        buffer and its unread input. What a slow reader makes us hold, counted live."""
        self._held_watcher = watcher
        self._note_held()

    def _note_held(self) -> None:
        watcher = self._held_watcher
        if watcher is not None:
            held = self._send_size + self._recv_buffered
            if held != self._held_reported:
                delta = held - self._held_reported
                self._held_reported = held
                watcher(delta)

    def close_write(self) -> None:
        """Half-close: send FIN after the queued bytes. Reading continues until the peer's FIN."""
        if self._local_fin or self._error is not None:
            return
        self._local_fin = True
        self._session._schedule(self)

    def reset(self, reason: str = "") -> None:
        """Abort the stream in both directions, telling the peer why."""
        if self._error is not None or self._closed.done():
            return
        self._recv_chunks.clear()
        self._recv_buffered = 0
        self._note_held()
        self._session._send_reset(self, reason)
        self._fail(StreamReset(reason or "reset locally"))

    # ---- state ---------------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return self._closed.done()

    @property
    def error(self) -> StreamReset | None:
        return self._error

    @property
    def is_quiet(self) -> bool:
        """Open both ways with nothing unread: what a parked keep-alive connection must be."""
        return not (
            self._closed.done() or self._remote_fin or self._local_fin or self._recv_buffered
        )

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    # ---- called by the session -----------------------------------------------------------

    def _on_data(self, payload: bytes) -> None:
        size = len(payload)
        if size > self._recv_credit:
            raise ProtocolError(
                f"stream {self.id} received {size} bytes with only {self._recv_credit} of window"
            )
        if self._remote_fin:
            raise ProtocolError(f"stream {self.id} received data after FIN")
        self._recv_credit -= size
        if self._error is not None:
            return
        if self._sink is not None:
            self._sink.data_received(payload)
            return
        self._recv_chunks.append(payload)
        self._recv_buffered += size
        self._note_held()
        self._wake_reader()

    def _on_fin(self) -> None:
        if self._remote_fin:
            return
        self._remote_fin = True
        if self._sink is not None and self._error is None:
            self._sink.eof_received()
        self._wake_reader()
        self._maybe_finished()

    def _on_window_update(self, delta: int) -> None:
        self._send_window += delta
        if self._send_window > MAX_WINDOW + INITIAL_WINDOW:
            raise ProtocolError(f"stream {self.id} send window grew past {MAX_WINDOW}")
        if self._send_size or (self._local_fin and not self._fin_sent):
            self._session._schedule(self)

    def _fail(self, error: StreamReset) -> None:
        if self._error is not None:
            return
        self._error = error
        self._send_chunks.clear()
        self._send_size = 0
        self._note_held()
        if self._sink is not None:
            self._sink.stream_reset(error)
        self._wake_reader()
        self._wake_drainer()
        self._finish()

    def _take_frame(self, budget: int, parts: list[bytes | memoryview]) -> int | None:
        """Append the next DATA frame of at most `budget` payload bytes to `parts` (header,
        then the payload's pieces); its payload size, or None if there is none to send."""
        if self._error is not None:
            return None
        size = min(self._send_size, self._send_window, budget)
        fin = self._local_fin and not self._fin_sent and size == self._send_size
        if size == 0 and not fin and not self._syn_pending:
            return None
        flags = Flag.NONE
        if self._syn_pending:
            flags |= Flag.SYN
            self._syn_pending = False
        if fin:
            flags |= Flag.FIN
            self._fin_sent = True
        parts.append(encode_header(FrameType.DATA, flags, self.id, size))
        self._take_payload(size, parts)
        self._note_held()
        self._send_window -= size
        self._after_send()
        if fin:
            self._maybe_finished()
        return size

    def _take_payload(self, size: int, parts: list[bytes | memoryview]) -> None:
        """Move the first `size` queued bytes to `parts`: whole chunks as they are, a split
        one as two views of it."""
        chunks = self._send_chunks
        self._send_size -= size
        while size:
            chunk = chunks[0]
            if len(chunk) <= size:
                chunks.popleft()
                parts.append(chunk)
                size -= len(chunk)
            else:
                view = memoryview(chunk)
                parts.append(view[:size])
                chunks[0] = view[size:]
                size = 0

    def _after_send(self) -> None:
        limit = self._session.config.send_buffer_limit
        if self._send_size <= limit:
            self._wake_drainer()
            if self._producer is not None and self._producer_paused:
                self._producer_paused = False
                self._producer[1]()

    @property
    def _sendable(self) -> bool:
        if self._error is not None:
            return False
        if self._syn_pending:
            return True
        if self._send_size and self._send_window > 0:
            return True
        return self._local_fin and not self._fin_sent and not self._send_size

    def _wake_reader(self) -> None:
        if self._read_waiter is not None and not self._read_waiter.done():
            self._read_waiter.set_result(None)

    def _wake_drainer(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def _maybe_finished(self) -> None:
        if self._remote_fin and self._fin_sent:
            self._finish()

    def _finish(self) -> None:
        if not self._closed.done():
            self._closed.set_result(None)
        self._session._forget(self)


class Session:
    """A yamux session. The dialling side (the agent) is the client and uses odd stream IDs."""

    def __init__(
        self,
        link: Link,
        *,
        is_client: bool,
        config: SessionConfig | None = None,
        name: str = "",
        on_stream: Callable[[Stream], None] | None = None,
    ) -> None:
        """`on_stream`, if given, gets each stream the peer opens, called from the reader as
        its SYN arrives (a task switch sooner than `accept`, which then never returns one)."""
        self.loop = asyncio.get_running_loop()
        self.config = config or SessionConfig()
        self.name = name
        self._link = link
        self._decoder = FrameDecoder(max_payload=self.config.receive_window)
        self._streams: dict[int, Stream] = {}
        self._next_id = 1 if is_client else 2
        self._accepted: asyncio.Queue[Stream | None] = asyncio.Queue()
        self._on_stream = on_stream
        self._control = ControlQueue(self.config.control)
        #: Streams with something to send, in the order they get to send it.
        self._ready: FairScheduler[Stream] = FairScheduler(
            self.config.max_frame_payload, overhead=HEADER_SIZE
        )
        self._wakeup = asyncio.Event()
        #: The writer task and a closing flush both send; the lock keeps frames in order.
        self._send_lock = asyncio.Lock()
        #: Above 0, `_kick` leaves queued frames for whoever sends them at the end of a batch.
        self._batching = 0
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._ping_ids = itertools.count(1)
        self._local_go_away = False
        self._remote_go_away = asyncio.Event()
        self._closed = asyncio.Event()
        self.close_reason = ""
        self.rtt: float | None = None

    # ---- public API ----------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def peer_going_away(self) -> bool:
        """The peer sent go-away: it will accept no new streams on this session."""
        return self._remote_go_away.is_set()

    async def wait_peer_going_away(self) -> None:
        await self._remote_go_away.wait()

    def open_stream(self, initial: bytes = b"") -> Stream:
        """Open a stream; `initial` travels in the same frame as the SYN. Does not wait."""
        if self._closed.is_set() or self._local_go_away or self._remote_go_away.is_set():
            raise SessionClosed(self.close_reason or "session is going away")
        stream_id = self._next_id
        if stream_id > 0xFFFFFFFF:
            raise SessionClosed("stream IDs exhausted")
        self._next_id += 2
        stream = Stream(self, stream_id, opened_locally=True)
        self._streams[stream_id] = stream
        with self._batched():
            self._grant_extra_window(stream)
            if initial:
                stream.write(initial)
            else:
                self._schedule(stream)
        return stream

    async def accept(self) -> Stream:
        """The next stream the peer opened; raises SessionClosed when the session ends."""
        stream = await self._accepted.get()
        if stream is None:
            self._accepted.put_nowait(None)
            raise SessionClosed(self.close_reason or "session closed")
        return stream

    async def ping(self) -> float:
        """Round-trip time of one ping, in seconds."""
        if self._closed.is_set():
            raise SessionClosed(self.close_reason or "session closed")
        ping_id = next(self._ping_ids) & 0xFFFFFFFF
        self._control.ping(ping_id)
        self._kick()
        waiter = self.loop.create_future()
        self._pings[ping_id] = waiter
        started = time.perf_counter()
        try:
            await waiter
        finally:
            self._pings.pop(ping_id, None)
        self.rtt = time.perf_counter() - started
        return self.rtt

    def go_away(self, code: GoAwayCode = GoAwayCode.NORMAL) -> None:
        """Tell the peer no new streams will be accepted; open streams carry on."""
        if self._local_go_away or self._closed.is_set():
            return
        self._local_go_away = True
        self._control.go_away(code)
        self._kick()

    async def shutdown(self, grace: float | None, reason: str = "") -> None:
        """Go away, let open streams finish (for up to `grace` seconds if given), then close.

        Streams still open then are reset with `reason` if one is given, so that their far
        ends (through a gateway, the user) learn why rather than that a link dropped."""
        self.go_away()
        streams_done = self.loop.create_task(self._streams_finished())
        closed = self.loop.create_task(self._closed.wait())
        try:
            await asyncio.wait(
                {streams_done, closed}, timeout=grace, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            streams_done.cancel()
            closed.cancel()
        if reason:
            for stream in list(self._streams.values()):
                stream.reset(reason)
        await self.close("shutdown")

    async def _streams_finished(self) -> None:
        while self._streams:
            await asyncio.wait([stream._closed for stream in self._streams.values()])

    async def close(self, reason: str = "closed", code: int = 1000) -> None:
        """Flush queued control frames, close the link and reset every open stream."""
        if self._closed.is_set():
            return
        await self._flush_control()
        self._terminate(reason)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._link.close(code, reason[:120]), timeout=2.0)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def run(self) -> None:
        """Serve the session until the link closes, the peer dies or `close` is called."""
        tasks = [
            asyncio.create_task(self._read_loop(), name=f"mux-read-{self.name}"),
            asyncio.create_task(self._write_loop(), name=f"mux-write-{self.name}"),
            asyncio.create_task(self._keepalive_loop(), name=f"mux-keepalive-{self.name}"),
            asyncio.create_task(self._closed.wait()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._terminate(self.close_reason or "link closed")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._link.close(1000, self.close_reason[:120]), 2.0)

    # ---- loops ---------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            try:
                data = await self._link.receive()
                if data is None:
                    self.close_reason = self.close_reason or "peer closed the connection"
                    return
                with self._batched():
                    for frame in self._decoder.feed(data):
                        self._handle(frame)
            except ProtocolError as exc:
                log.warning("session %s: protocol error: %s", self.name, exc)
                self._control.go_away(GoAwayCode.PROTOCOL_ERROR)
                await self._flush_control()
                self.close_reason = f"protocol error: {exc}"
                return

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while message := self._next_message():
                try:
                    async with self._send_lock:
                        await self._link.send(message)
                except Exception as exc:
                    self.close_reason = self.close_reason or f"send failed: {exc!r}"
                    return

    async def _flush_control(self) -> None:
        with contextlib.suppress(Exception):
            while self._control:
                message = b"".join(self._control.take(self.config.max_message_size))
                async with asyncio.timeout(2.0), self._send_lock:
                    await self._link.send(message)

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.keepalive_interval)
            try:
                await asyncio.wait_for(self.ping(), timeout=self.config.keepalive_timeout)
            except TimeoutError:
                self.close_reason = (
                    f"keep-alive: no pong for {self.config.keepalive_timeout:g}s, peer is dead"
                )
                log.warning("session %s: %s", self.name, self.close_reason)
                return

    def _next_message(self) -> bytearray:
        """Coalesce queued control frames and ready data into one link message (a bytearray,
        so the link may mask it in place instead of copying it again)."""
        budget = self.config.max_message_size
        parts: list[bytes | memoryview] = list(self._control.take(budget))
        ready = self._ready
        ready.begin(budget - sum(len(part) for part in parts))
        # A frame taken can resume a producer that queues more; that waits for the next
        # message (both callers loop until there is none) rather than nesting one here.
        self._batching += 1
        try:
            while (turn := ready.pick()) is not None:
                stream, allowance = turn
                ready.served(stream, stream._take_frame(allowance, parts), stream._sendable)
        finally:
            self._batching -= 1
        return bytearray().join(parts)

    # ---- frame handling ------------------------------------------------------------------

    def _handle(self, frame: Frame) -> None:
        if frame.type is FrameType.PING:
            self._handle_ping(frame)
            return
        if frame.type is FrameType.GO_AWAY:
            self._handle_go_away(frame)
            return
        flags = int(frame.flags)  # plain ints: Flag's operators show in a round trip's CPU
        stream = self._streams.get(frame.stream_id)
        if flags & _SYN:
            stream = self._on_syn(frame.stream_id)
        if stream is None:
            return  # late frame for a stream we already closed or refused
        if frame.type is FrameType.WINDOW_UPDATE:
            if frame.length:
                stream._on_window_update(frame.length)
        elif flags & _RST:
            reason = frame.payload[:_MAX_RESET_REASON].decode("utf-8", "replace")
            stream._fail(StreamReset(reason or "reset by peer"))
            return
        elif frame.payload:
            stream._on_data(frame.payload)
        if flags & _RST:
            stream._fail(StreamReset("reset by peer"))
        elif flags & _FIN:
            stream._on_fin()

    def _on_syn(self, stream_id: int) -> Stream | None:
        if stream_id in self._streams:
            raise ProtocolError(f"SYN for stream {stream_id}, which is already open")
        if (stream_id % 2) == (self._next_id % 2):
            raise ProtocolError(f"peer opened stream {stream_id} with our parity")
        if self._local_go_away or self._closed.is_set():
            self._refuse(stream_id)
            return None
        if self._on_stream is None and self._accepted.qsize() >= self.config.accept_backlog:
            log.warning("session %s: accept backlog full, refusing stream", self.name)
            self._refuse(stream_id)
            return None
        stream = Stream(self, stream_id, opened_locally=False)
        self._streams[stream_id] = stream
        extra = self.config.receive_window - INITIAL_WINDOW
        self._control.window_update(stream_id, Flag.ACK, extra)
        self._kick()
        stream._recv_credit += extra
        if self._on_stream is None:
            self._accepted.put_nowait(stream)
        else:
            self._on_stream(stream)
        return stream

    def _handle_ping(self, frame: Frame) -> None:
        if frame.flags & Flag.SYN:
            self._control.pong(frame.length)
            self._kick()
        elif frame.flags & Flag.ACK:
            waiter = self._pings.get(frame.length)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _handle_go_away(self, frame: Frame) -> None:
        self._remote_go_away.set()
        if frame.length != GoAwayCode.NORMAL:
            try:
                code = GoAwayCode(frame.length).name.lower().replace("_", " ")
            except ValueError:
                code = f"code {frame.length}"
            self.close_reason = f"peer went away: {code}"
            self._terminate(self.close_reason)

    # ---- helpers for streams -------------------------------------------------------------

    def _grant_extra_window(self, stream: Stream) -> None:
        extra = self.config.receive_window - INITIAL_WINDOW
        if extra:
            stream._recv_credit += extra
            stream._syn_pending = False
            self._control.window_update(stream.id, Flag.SYN, extra)
            self._kick()

    def _refuse(self, stream_id: int) -> None:
        self._control.refuse(stream_id)
        self._kick()

    def _schedule(self, stream: Stream) -> None:
        self._ready.add(stream)
        self._kick()

    def _kick(self) -> None:
        """Send what is queued now while the link takes it without waiting; what is left
        (the link is paused, or the writer holds a message it is still sending) is the
        writer task's. Bytes never overtake each other: every message is built from the
        queues and handed to the link in one synchronous step, and none is built while
        the lock's holder has one in hand."""
        if self._batching:
            return
        link = self._link
        if not self._send_lock.locked() and not self._closed.is_set():
            self._batching += 1  # what callbacks queue meanwhile, this loop sends
            try:
                while (
                    (self._ready or self._control)
                    and link.writable
                    and (message := self._next_message())
                ):
                    link.send_nowait(message)
            finally:
                self._batching -= 1
        if self._ready or self._control:
            self._wakeup.set()

    @contextlib.contextmanager
    def _batched(self) -> Iterator[None]:
        """Queue frames without sending them until the block ends, then send them together:
        one link message for a SYN and its first bytes, or for the replies to a burst."""
        self._batching += 1
        try:
            yield
        finally:
            self._batching -= 1
            self._kick()

    def _send_window_update(self, stream: Stream, delta: int) -> None:
        self._control.window_update(stream.id, Flag.NONE, delta)
        self._kick()

    def _send_reset(self, stream: Stream, reason: str) -> None:
        payload = reason.encode()[:_MAX_RESET_REASON]
        flags = Flag.SYN if stream._syn_pending else Flag.NONE
        stream._syn_pending = False
        self._control.reset(stream.id, flags, payload)
        self._kick()

    def _forget(self, stream: Stream) -> None:
        self._streams.pop(stream.id, None)

    def _terminate(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self.close_reason = self.close_reason or reason
        self._closed.set()
        for stream in list(self._streams.values()):
            stream._fail(SessionClosed(self.close_reason))
        for waiter in self._pings.values():
            if not waiter.done():
                waiter.set_exception(SessionClosed(self.close_reason))
        self._accepted.put_nowait(None)
