"""Plumbing shared by both endpoints: accept TCP, do the TLS handshake ourselves (so failures are counted),
read MQTT packets with deadlines, serialise writes, and make sure nothing a client does can take the server
down: every per-connection error is logged and ends only that connection.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ctypes
import ctypes.util
import gc
import logging
import ssl
import time
from urllib.parse import unquote

from host_tools.emulator import mqtt_codec as mqtt
from host_tools.emulator.records import Stats

CONNECT_TIMEOUT_S = 10.0
TLS_HANDSHAKE_TIMEOUT_S = 10.0
READ_CHUNK = 16 * 1024
# At most this many connections per endpoint at once. A new one beyond it takes the place of the oldest connection
# that has not yet sent its CONNECT (a stalled or idle client), or is closed at once when every one is a client.
MAX_CONNECTIONS = 1000
# Every TLS connection holds a read buffer and objects in reference cycles (asyncio's SSL protocol and transport)
# that only the cyclic garbage collector frees; after a burst of ended connections memory would stay taken until a
# full collection happens by chance. The janitor collects once this many connections ended, or this long after the
# last one ended, and hands freed heap back to the system (glibc malloc_trim).
COLLECT_AFTER_ENDED = 200
COLLECT_IDLE_S = 2.0


class MemoryJanitor:
    """Full garbage collections after connections end (see COLLECT_AFTER_ENDED), shared by both endpoints."""

    def __init__(self):
        self.ended = 0
        self.collections = 0
        self._pending: asyncio.TimerHandle | None = None
        self._pending_loop: asyncio.AbstractEventLoop | None = None
        libc = ctypes.util.find_library("c")
        self._trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None

    def connection_ended(self) -> None:
        self.ended += 1
        loop = asyncio.get_running_loop()
        if self._pending is not None and self._pending_loop is not loop:  # left over from a loop that has ended
            self._pending = None
        if self.ended >= COLLECT_AFTER_ENDED:
            self.collect()
        elif self._pending is None:
            self._pending = loop.call_later(COLLECT_IDLE_S, self.collect)
            self._pending_loop = loop

    def collect(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if not self.ended:
            return
        self.ended = 0
        self.collections += 1
        gc.collect()
        if self._trim is not None:
            self._trim(0)


_janitor: MemoryJanitor | None = None

# asyncio gives every TLS connection a 256 KiB read buffer (SSLProtocol.max_size), allocated when the handshake
# starts: hundreds of clients that open TCP and never speak cost hundreds of MB. A TLS record is at most 16 KiB,
# so 64 KiB loses nothing but copies.
TLS_READ_BUFFER = 64 * 1024
if getattr(asyncio.sslproto.SSLProtocol, "max_size", 0) > TLS_READ_BUFFER:
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


def janitor() -> MemoryJanitor:
    global _janitor
    if _janitor is None:
        _janitor = MemoryJanitor()
    return _janitor


class ConnectionDropped(Exception):
    """The server decided to drop the connection (policy, not an error); the message says why."""


class MqttSession:
    """One client connection: a packet reader over an asyncio stream plus a write lock."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        endpoint: str,
        peer: str,
        max_packet: int = mqtt.DEFAULT_MAX_PACKET,
    ):
        self.reader, self.writer = reader, writer
        self.endpoint, self.peer = endpoint, peer
        self.client_id: str | None = None
        self.state = None  # the endpoint's per-connection state, once CONNECT was accepted
        self.keepalive_timeout: float | None = None  # 1.5x the client's keep-alive, once CONNECT was accepted
        self._packets = mqtt.PacketReader(max_packet)
        self._write_lock = asyncio.Lock()
        self._next_packet_id = 0
        self.closed = False
        self.close_reason: str | None = None

    def __str__(self):
        return f"{self.endpoint} {self.client_id or '?'}@{self.peer}"

    async def read_packet(self, timeout: float | None) -> mqtt.Packet | None:
        """The next packet; None when the client closed. Raises TimeoutError when `timeout` passes first."""
        async with asyncio.timeout(timeout):
            while True:
                packet = self._packets.next_packet()
                if packet is not None:
                    return packet
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    if self._packets.buffered:
                        raise mqtt.MqttProtocolError(
                            f"connection closed inside a packet ({self._packets.buffered} bytes buffered)"
                        )
                    return None
                self._packets.feed(data)

    async def first_byte(self, timeout: float | None) -> int | None:
        """The first byte the client sent (without consuming it); None when it closed before sending any."""
        async with asyncio.timeout(timeout):
            while not self._packets.buffered:
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    return None
                self._packets.feed(data)
        return self._packets.peek()

    async def send(self, packet: mqtt.Packet) -> None:
        await self.send_bytes(mqtt.encode(packet))

    async def send_bytes(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionDropped("connection already closed")
        async with self._write_lock:
            self.writer.write(data)
            await self.writer.drain()

    def next_packet_id(self) -> int:
        self._next_packet_id = self._next_packet_id % 0xFFFF + 1
        return self._next_packet_id

    def close(self, reason: str = "closed") -> None:
        """Close now (from any task). Bytes already written are flushed before the TLS close."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        try:
            self.writer.close()
        except Exception:  # the transport may already be gone
            pass

    def abort(self, reason: str) -> None:
        """Cut the connection without flushing (like a network failure)."""
        self.closed = True
        self.close_reason = reason
        transport = self.writer.transport
        if transport is not None:
            transport.abort()


def parse_query(text: str) -> dict[str, str]:
    """`a=1&b=2` -> {'a': '1', 'b': '2'} (values percent-decoded; order and case of names kept as sent)."""
    params: dict[str, str] = {}
    for part in text.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        params[unquote(name)] = unquote(value)
    return params


def raw_query(topic: str) -> dict[str, str]:
    """Topic parameters as sent (not percent-decoded: `$rid` is echoed back byte for byte)."""
    _, _, query = topic.partition("?")
    params = {}
    for part in query.split("&"):
        if part:
            name, _, value = part.partition("=")
            params.setdefault(name, value)
    return params


class Endpoint:
    """Base of the DPS and gateway endpoints: owns the listening server and the live sessions."""

    name = "endpoint"

    def __init__(self, ctx, ssl_context: ssl.SSLContext):
        self.ctx = ctx
        self.ssl_context = ssl_context
        self.log = logging.getLogger(f"host_tools.emulator.{self.name}")
        self.sessions: set[MqttSession] = set()
        # Connections not yet past CONNECT (TLS handshake included), oldest first: the ones evicted at the cap.
        self.waiting: dict[asyncio.StreamWriter, asyncio.Task] = {}
        self._evicted: set[asyncio.Task] = set()
        self.open_connections = 0
        self.max_connections = MAX_CONNECTIONS
        self.server: asyncio.base_events.Server | None = None

    @property
    def stats(self) -> Stats:
        return self.ctx.stats

    async def listen(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._accept, host, port, limit=READ_CHUNK * 4)
        return self.server.sockets[0].getsockname()[1]

    def _make_room(self, peer: str) -> bool:
        """Below the cap, or made so by ending the oldest connection still waiting for TLS or CONNECT (its task is
        cancelled, so the TLS handshake it may be in unwinds cleanly)."""
        if self.open_connections - len(self._evicted) < self.max_connections:
            return True
        candidates = [writer for writer, task in self.waiting.items() if task not in self._evicted]
        if not candidates:
            return False
        task = self.waiting[candidates[0]]
        self._evicted.add(task)
        self.stats.incr(self.name, "evicted")
        self.log.info(
            "%s: %d connections open: ending the oldest one without CONNECT for %s",
            self.name,
            self.open_connections,
            peer,
        )
        task.cancel()
        return True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else "?"
        self.stats.incr(self.name, "connections")
        if not self._make_room(peer):
            self.stats.incr(self.name, "over_capacity")
            self.log.warning("%s: %d connections open, refusing %s", self.name, self.open_connections, peer)
            writer.transport.abort()
            return
        self.open_connections += 1
        self.waiting[writer] = asyncio.current_task()
        self.stats.incr(self.name, "active")
        session = None
        try:
            try:
                await writer.start_tls(self.ssl_context, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S)
            except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
                # Typical cause: the client does not trust our certificate or name (it says so in an alert).
                self.stats.incr(self.name, "tls_failures")
                self.log.info("%s: TLS handshake with %s failed: %s", self.name, peer, _short(exc))
                writer.transport.abort()
                return
            if writer.transport is None:  # the client left as the handshake ended (asyncio gives no transport)
                return
            session = MqttSession(reader, writer, self.name, peer)
            self.sessions.add(session)
            await self.serve(session)
        except ConnectionDropped as exc:
            self.stats.incr(self.name, "dropped")
            self.log.info("%s: dropping the connection: %s", session, exc)
        except mqtt.MqttProtocolError as exc:
            self.stats.incr(self.name, "dropped")
            self.stats.incr(self.name, "protocol_errors")
            self.log.warning("%s: protocol error, dropping the connection: %s", session, exc)
        except TimeoutError:
            self.stats.incr(self.name, "dropped")
            self.log.info("%s: client silent past its deadline (CONNECT or 1.5x keep-alive), dropping", session)
        except (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError) as exc:
            self.log.debug("%s: connection lost: %s", session or peer, _short(exc))
        except asyncio.CancelledError:
            if asyncio.current_task() not in self._evicted:
                raise
            self.log.debug("%s: ended to make room", session or peer)
        except Exception:  # a bug in the emulator: log it loudly, but keep serving everyone else
            self.stats.incr(self.name, "internal_errors")
            self.log.exception("%s: internal error while serving the connection", session or peer)
        finally:
            self.open_connections -= 1
            self.waiting.pop(writer, None)
            self._evicted.discard(asyncio.current_task())
            self.stats.incr(self.name, "active", -1)
            janitor().connection_ended()
            if session is not None:
                self.sessions.discard(session)
                await self.on_session_end(session)
                if session.close_reason and session.close_reason != "closed":
                    self.log.debug("%s: closed (%s)", session, session.close_reason)
                session.close()
            elif writer.transport is not None:
                writer.close()

    async def serve(self, session: MqttSession) -> None:
        raise NotImplementedError

    async def on_session_end(self, session: MqttSession) -> None:
        """Hook for endpoint clean-up (cancel timers and response tasks)."""

    async def first_connect(self, session: MqttSession) -> mqtt.Connect | None:
        first = await session.first_byte(CONNECT_TIMEOUT_S)
        if first is None:
            return None
        if first >> 4 != mqtt.CONNECT:
            # Not MQTT at all (or not starting with CONNECT): no need to wait for a packet that never ends.
            raise mqtt.MqttProtocolError(f"first byte {first:#04x} does not start a CONNECT packet")
        packet = await session.read_packet(CONNECT_TIMEOUT_S)
        if packet is None:
            return None
        if not isinstance(packet, mqtt.Connect):
            raise mqtt.MqttProtocolError(f"first packet is {type(packet).__name__}, not CONNECT")
        return packet

    async def accept_client(self, session: MqttSession):
        """Reads the CONNECT, authenticates it (`_authenticate`, per endpoint) and answers CONNACK 0.
        Returns the endpoint's client state, or None when the connection was refused or ended."""
        connect = await self.first_connect(session)
        if connect is None:
            return None
        session.client_id = connect.client_id
        self.stats.client_connected(self.name, connect.client_id)
        recorder = getattr(self.ctx, "credentials_received", None)
        if recorder is not None:
            # Test mode (--record-credentials): what really arrived on the wire, so a test can search every output
            # for it whatever the device meant to send. Never on by default: the file holds live tokens.
            recorder.append(
                {
                    "time": time.time(),
                    "endpoint": self.name,
                    "client_id": connect.client_id,
                    "username": connect.username,
                    "password": connect.password.decode("utf-8", "replace") if connect.password else None,
                }
            )
        self.log.debug("%s: %r", session, connect)
        if connect.protocol_name != "MQTT" or connect.protocol_level != 4:
            await self.refuse(
                session,
                mqtt.CONNACK_UNACCEPTABLE_PROTOCOL,
                f"protocol {connect.protocol_name!r} level {connect.protocol_level}; {self.name} needs MQTT 3.1.1",
            )
            return None
        client = await self._authenticate(session, connect)
        if client is None:
            return None
        self.waiting.pop(session.writer, None)  # a client now: never evicted for room
        present = self.resume_session(client, connect)
        await session.send(mqtt.ConnAck(mqtt.CONNACK_ACCEPTED, session_present=present))
        session.state = client
        session.keepalive_timeout = self.keepalive_timeout(connect)
        return client

    async def _authenticate(self, session: MqttSession, connect: mqtt.Connect):
        raise NotImplementedError

    def resume_session(self, client, connect: mqtt.Connect) -> bool:
        """Restores what the endpoint keeps for a clean_session=0 client; True when it had a session (CONNACK
        session present)."""
        return False

    async def refuse(self, session: MqttSession, code: int, why: str) -> None:
        self.stats.incr(self.name, "refused")
        self.log.info("%s: CONNACK %d (%s)", session, code, why)
        await session.send(mqtt.ConnAck(return_code=code))
        session.close("refused")

    def keepalive_timeout(self, connect: mqtt.Connect) -> float | None:
        # MQTT 3.1.1 section 3.1.2.10: the server may drop a client silent for 1.5x its keep-alive.
        return connect.keepalive * 1.5 if connect.keepalive else None

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for session in list(self.sessions):
            session.abort("emulator stopping")
        if self.server is not None:
            try:
                await asyncio.wait_for(self.server.wait_closed(), 5)
            except TimeoutError:
                pass

    def drop_all(self, reason: str) -> int:
        sessions = list(self.sessions)
        for session in sessions:
            self.stats.incr(self.name, "dropped")
            self.log.info("%s: dropping the connection: %s", session, reason)
            session.abort(reason)
        return len(sessions)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."
