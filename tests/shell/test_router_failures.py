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
        nested: object = 1
        for _ in range(945):  # decodes (deeper is refused as malformed), but repr recurses too deep
            nested = [nested]
        body = {"op": "submit", "id": "deep", "workflow": {"1": {"class_type": "A", "inputs": {}}}}
        body["client_data"] = nested
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
