"""``sidecar.wsdirect`` cuts whole data frames itself: the same messages, in the same order, as
``websockets``' own parser would give, however the bytes are split across reads.

A property test (hypothesis, bounded) feeds one ``DirectConnection`` a real handshake response
followed by a random mix of frames (text and binary of every length encoding, pings and pongs
from the server, a close at the end), cut at random points, with the callback started at a
random moment. Each frame kind the cutter hands to ``websockets`` must still have its effect:
a ping is answered with a pong, a close closes. Real sockets: ``tests/shell/test_wsdirect.py``.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri
from websockets.utils import accept_key

from sidecar.wsdirect import DirectConnection

BOUNDED = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One unmasked frame, as a server sends it."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return bytes([first, n]) + payload
    if n < 65536:
        return bytes([first, 126]) + struct.pack("!H", n) + payload
    return bytes([first, 127]) + struct.pack("!Q", n) + payload


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.aborted = False

    def write(self, data: Any) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def connection(max_size: int = 2**20) -> tuple[DirectConnection, Transport, bytes]:
    """A connection whose handshake request went out; returns the response that completes it."""
    protocol = ClientProtocol(parse_uri("ws://127.0.0.1:1/ws"), max_size=max_size)
    conn = DirectConnection(protocol)
    transport = Transport()
    conn.connection_made(transport)
    request = protocol.connect()
    protocol.send_request(request)
    conn.request = request
    key = request.headers["Sec-WebSocket-Key"]
    response = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
    ).encode()
    return conn, transport, response


def pongs_written(written: bytes) -> int:
    """Pong frames among what the client wrote (client frames are masked: 4 key bytes)."""
    count, pos = 0, 0
    while pos + 2 <= len(written):
        first, second = written[pos], written[pos + 1]
        length = second & 0x7F
        head = 2
        if length == 126:
            length, head = struct.unpack("!H", written[pos + 2 : pos + 4])[0], 4
        elif length == 127:
            length, head = struct.unpack("!Q", written[pos + 2 : pos + 10])[0], 10
        head += 4 if second & 0x80 else 0
        count += first == 0x8A
        pos += head + length
    return count


payloads = st.one_of(
    st.binary(max_size=200),
    st.integers(min_value=120, max_value=300).map(lambda n: b"m" * n),  # around the 126 boundary
    st.integers(min_value=65_530, max_value=65_600).map(lambda n: b"L" * n),  # around the 64-bit length
)
items = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["text", "binary"]), payloads),
        st.tuples(st.just("ping"), st.binary(max_size=20)),
        st.tuples(st.just("pong"), st.binary(max_size=20)),
    ),
    max_size=25,
)


@BOUNDED
@given(
    items=items, cuts=st.lists(st.integers(min_value=0, max_value=200_000), max_size=12), start_at=st.integers(0, 14)
)
def test_cut_messages_equal_the_frames_sent(items: list[tuple[str, bytes]], cuts: list[int], start_at: int) -> None:
    async def run() -> None:
        conn, transport, response = connection()
        opcodes = {"text": 1, "binary": 2, "ping": 9, "pong": 10}
        stream = response + b"".join(frame(opcodes[kind], data) for kind, data in items)
        stream += frame(8, struct.pack("!H", 1000))  # a normal close
        bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
        got: list[bytes] = []
        for index, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
            if index == start_at:
                conn.start(got.append)
            conn.data_received(stream[a:b])
        if start_at >= len(bounds) - 1:
            conn.start(got.append)
        assert got == [data for kind, data in items if kind in ("text", "binary")]
        after_request = bytes(transport.written).split(b"\r\n\r\n", 1)[1]  # the handshake request first
        assert pongs_written(after_request) == sum(kind == "ping" for kind, _ in items)
        assert conn.protocol.state is not State.OPEN  # the close was handed over and acted on
        assert not conn.assembled

    asyncio.run(run())


def test_a_frame_over_max_size_is_refused_by_websockets_as_before() -> None:
    async def run() -> None:
        conn, transport, response = connection(max_size=1000)
        got: list[bytes] = []
        conn.data_received(response)
        conn.start(got.append)
        conn.data_received(frame(1, b"ok") + frame(1, b"x" * 1001) + frame(1, b"never"))
        assert got == [b"ok"]
        assert conn.protocol.close_rcvd is None and conn.protocol.close_sent is not None
        assert conn.protocol.close_sent.code == 1009  # message too big

    asyncio.run(run())


def test_a_masked_or_reserved_frame_fails_the_connection_as_websockets_does() -> None:
    async def run() -> None:
        for bad in (bytes([0x81, 0x82]) + b"abcd" + b"xy", bytes([0xC1, 0x01]) + b"z"):  # masked; RSV1 set
            conn, transport, response = connection()
            got: list[bytes] = []
            conn.data_received(response)
            conn.start(got.append)
            conn.data_received(frame(2, b"before") + bad + frame(2, b"after"))
            assert got == [b"before"]
            assert conn.protocol.close_sent is not None and conn.protocol.close_sent.code == 1002  # protocol error

    asyncio.run(run())


def test_a_fragment_and_all_after_it_go_to_the_assembler() -> None:
    async def run() -> None:
        conn, transport, response = connection()
        got: list[bytes] = []
        conn.data_received(response)
        conn.start(got.append)
        conn.data_received(frame(1, b"first") + frame(1, b"frag", fin=False) + frame(0, b"mented") + frame(1, b"after"))
        assert got == [b"first"]
        assert conn.assembled
        assert [await conn.recv(decode=False) for _ in range(2)] == [b"fragmented", b"after"]

    asyncio.run(run())


def test_frames_in_the_same_read_as_the_handshake_response_are_cut_too() -> None:
    async def run() -> None:
        for cut_back in (None, 1, 2, 3):  # one read; the blank line that ends the response split across two
            conn, _, response = connection()
            stream = response + frame(1, b"one") + frame(2, b"two")
            got: list[bytes] = []
            if cut_back is None:
                conn.data_received(stream)
            else:
                conn.data_received(stream[: len(response) - cut_back])
                conn.data_received(stream[len(response) - cut_back :])
            assert conn.response is not None
            conn.start(got.append)
            assert got == [b"one", b"two"]
            assert conn._cutting  # the frames after the response were cut here, not parsed by websockets

    asyncio.run(run())
