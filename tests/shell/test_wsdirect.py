"""``sidecar.wsdirect``: messages handed over from ``data_received`` keep their order and meaning.

A real ``websockets`` server on 127.0.0.1; the client is ``connect(create_connection=DirectConnection)``
as the instance loop opens it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from sidecar.wsdirect import DirectConnection

Script = Callable[[ServerConnection], Any]


@asynccontextmanager
async def server(script: Script) -> AsyncIterator[str]:
    """A server that runs ``script`` on each connection, then closes it normally."""

    async def handler(conn: ServerConnection) -> None:
        await script(conn)
        await conn.close()

    async with serve(handler, "127.0.0.1", 0, compression=None) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"


async def read_all(url: str, on_message: Callable[[bytes], None] | None = None) -> tuple[list[bytes], DirectConnection]:
    """Every message in order, as the instance loop reads them (callback first, then ``recv()``)."""
    got: list[bytes] = []
    async with connect(url, compression=None, create_connection=DirectConnection) as ws:
        assert isinstance(ws, DirectConnection)
        ws.start(on_message or got.append)
        async with asyncio.timeout(10):
            while True:
                try:
                    got.append(await ws.recv(decode=False))
                except websockets.ConnectionClosedOK:
                    return got, ws


async def test_whole_messages_arrive_in_order_through_the_callback() -> None:
    async def script(conn: ServerConnection) -> None:
        for i in range(200):
            await conn.send(f'{{"i": {i}}}')
        await conn.send(b"\x00\x00\x00\x01binary")

    async with server(script) as url:
        got, ws = await read_all(url)
    assert got == [f'{{"i": {i}}}'.encode() for i in range(200)] + [b"\x00\x00\x00\x01binary"]
    assert not ws.assembled


async def test_a_fragmented_message_and_all_after_it_go_through_recv_in_order() -> None:
    async def script(conn: ServerConnection) -> None:
        await conn.send("first")
        await conn.send(iter(["frag", "mented"]))  # an iterable is sent as one fragmented message
        await conn.send("after")
        await conn.send(b"bin")

    async with server(script) as url:
        got, ws = await read_all(url)
    assert got == [b"first", b"fragmented", b"after", b"bin"]
    assert ws.assembled


async def test_a_failing_callback_aborts_the_connection_and_is_kept() -> None:
    handled: list[bytes] = []
    release = asyncio.Event()

    async def script(conn: ServerConnection) -> None:
        for text in ("ok", "boom", "never handled"):
            await conn.send(text)
        async with asyncio.timeout(10):
            await release.wait()  # the client aborts before this is set

    def on_message(data: bytes) -> None:
        if data == b"boom":
            raise ValueError("bad message")
        handled.append(data)

    async with server(script) as url:
        async with connect(url, compression=None, create_connection=DirectConnection) as ws:
            assert isinstance(ws, DirectConnection)
            ws.start(on_message)
            with pytest.raises(websockets.ConnectionClosed):
                async with asyncio.timeout(10):
                    await ws.recv(decode=False)
            release.set()
    assert isinstance(ws.failure, ValueError)
    assert handled == [b"ok"]


def _texts(n: int) -> Iterable[str]:
    return (str(i) for i in range(n))


async def test_messages_received_before_start_are_handed_over_first() -> None:
    """The instance loop starts the callback only after its HTTP probes: nothing read meanwhile is lost."""
    sent, release = asyncio.Event(), asyncio.Event()

    async def script(conn: ServerConnection) -> None:
        for text in _texts(50):
            await conn.send(text)
        await conn.send("last")
        sent.set()
        async with asyncio.timeout(10):
            await release.wait()

    got: list[bytes] = []
    async with server(script) as url:
        async with connect(url, compression=None, create_connection=DirectConnection) as ws:
            assert isinstance(ws, DirectConnection)
            async with asyncio.timeout(10):
                await sent.wait()
                await (await ws.ping())  # its pong follows the messages on the socket: they were all read
            assert ws._early is not None and len(ws._early) == 51
            ws.start(got.append)
            release.set()
            with pytest.raises(websockets.ConnectionClosedOK):
                async with asyncio.timeout(10):
                    await ws.recv(decode=False)
    assert got == [str(i).encode() for i in range(50)] + [b"last"]
