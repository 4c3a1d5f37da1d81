"""The ROUTER answers a request whose handler failed, whatever the request holds."""

from __future__ import annotations

import asyncio

import msgspec
import zmq
import zmq.asyncio

from sidecar.protocol.wire import Request
from sidecar.router import Router


async def test_a_failed_handler_on_a_deeply_nested_request_still_gets_an_internal_error_reply():
    """Found by fuzzing (issue 12): a ``submit`` whose ``client_data`` nests about 945 deep decodes,
    its handler fails, and logging the whole request with %r raised RecursionError: no reply at all.
    The failure is logged by op and id, and the client gets ``internal_error``."""

    async def failing(request: Request) -> msgspec.Struct:
        raise RuntimeError("handler bug")

    ctx = zmq.asyncio.Context()
    router = Router(ctx, "tcp://127.0.0.1:*", failing)  # type: ignore[arg-type]
    serving = asyncio.create_task(router.serve())
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(router.endpoint)
    try:
        # As deep as a task on this loop can decode (deeper is refused as malformed), so repr, called
        # deeper in the stack when the failure is logged, recurses too far. Probed, not fixed: the
        # stack the tests run on differs (about 945 under plain pytest, less under pytest-xdist).
        depth = await asyncio.create_task(_deepest_decodable()) - 5
        body = {"op": "submit", "id": "deep", "workflow": {"1": {"class_type": "A", "inputs": {}}}}
        body["client_data"] = _nest(depth)
        await dealer.send(msgspec.msgpack.encode(body))
        async with asyncio.timeout(10):
            reply = msgspec.msgpack.decode(await dealer.recv())
        assert reply["id"] == "deep" and reply["ok"] is False
        assert reply["error"]["code"] == "internal_error"
    finally:
        serving.cancel()
        dealer.close()
        router.close()
        ctx.term()


def _nest(depth: int) -> object:
    nested: object = 1
    for _ in range(depth):
        nested = [nested]
    return nested


async def _deepest_decodable() -> int:
    """The deepest list nesting msgspec decodes in a task of this loop (a bisection)."""
    low, high = 1, 5000
    while low < high:
        mid = (low + high + 1) // 2
        try:
            msgspec.msgpack.decode(msgspec.msgpack.encode(_nest(mid)))
            low = mid
        except (RecursionError, msgspec.DecodeError):
            high = mid - 1
    return low
