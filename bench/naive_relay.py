"""A relay as a user would write it by hand: ComfyUI's WebSocket -> json -> a ZeroMQ PUB socket.

The comparison point of ``report.py``: what the sidecar's hot path must beat. Plain and
idiomatic on purpose, with the libraries' defaults: ``websockets.connect`` (which offers
permessage-deflate, and ComfyUI's aiohttp server accepts it), ``json``, and a ``zmq.PUB``
socket. Each text message is published as ``[type, json]`` with the instance's name added,
each binary one (a preview) as ``[b"preview", bytes]``. No reconnects, no job tracking, no
state: whoever posts the prompts uses the same clientId.

Usage: ``python bench/naive_relay.py --pub tcp://127.0.0.1:5557 --client-id ID NAME=URL [NAME=URL...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import websockets
import zmq


async def relay(name: str, url: str, client_id: str, pub: zmq.Socket) -> None:
    async with websockets.connect(url.replace("http", "ws", 1) + f"/ws?clientId={client_id}") as ws:
        print(f"relaying {name}", file=sys.stderr, flush=True)
        async for message in ws:
            if isinstance(message, bytes):
                pub.send_multipart([b"preview", message])
            else:
                event = json.loads(message)
                event["instance"] = name
                pub.send_multipart([event["type"].encode(), json.dumps(event).encode()])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pub", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("instances", nargs="+", metavar="NAME=URL")
    args = parser.parse_args()
    pub = zmq.Context().socket(zmq.PUB)
    pub.bind(args.pub)
    pairs = [item.split("=", 1) for item in args.instances]
    await asyncio.gather(*(relay(name, url, args.client_id, pub) for name, url in pairs))


if __name__ == "__main__":
    asyncio.run(main())
