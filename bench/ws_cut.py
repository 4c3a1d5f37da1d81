"""CPU per frame of the WebSocket read path alone: ``DirectConnection.data_received`` with an
empty callback, one frame per call (frames paced: one read each) and 50 per call (a burst).

No sockets: a connection completes a real handshake on a stand-in transport, then is fed a
ComfyUI ``progress`` frame. Thread CPU time, best of 7. Runs against whichever ``sidecar``
package is first on ``PYTHONPATH`` (for before/after figures: ``PYTHONPATH=OLD_TREE``).

Usage: ``python bench/ws_cut.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri
from websockets.utils import accept_key

from sidecar import wsdirect

FRAME = (
    b'{"type": "progress", "data": {"value": 7, "max": 20, '
    b'"prompt_id": "0f2b8f1e-3a2c-4a57-9a53-6a1d2b3c4d5e", "node": "3"}}'
)


class Transport(asyncio.Transport):
    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def main() -> None:
    protocol = ClientProtocol(parse_uri("ws://127.0.0.1:1/ws"), max_size=2**24)
    conn = wsdirect.DirectConnection(protocol)
    conn.connection_made(Transport())
    request = protocol.connect()
    protocol.send_request(request)
    conn.request = request
    response = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(request.headers['Sec-WebSocket-Key'])}\r\n\r\n"
    ).encode()
    conn.data_received(response)
    assert protocol.state is State.OPEN
    delivered = 0

    def count(_: bytes) -> None:
        nonlocal delivered
        delivered += 1

    conn.start(count)
    one = bytes((0x81, len(FRAME))) + FRAME
    print(f"sidecar.wsdirect from {wsdirect.__file__}")
    for label, data, per in (("1 frame per read", one, 1), ("50 frames per read", one * 50, 50)):
        best = float("inf")
        for _ in range(7):
            reps = 20_000 // per
            t0 = time.thread_time()
            for _ in range(reps):
                conn.data_received(data)
            best = min(best, (time.thread_time() - t0) / (reps * per) * 1e6)
        print(f"{label}: {best:.2f} us per frame")
    assert delivered == 7 * 2 * 20_000


if __name__ == "__main__":
    asyncio.run(main())
