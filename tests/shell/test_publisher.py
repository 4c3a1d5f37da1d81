"""``sidecar.publisher``: what one subscriber does never grows the sidecar's memory without bound.

A real PUB socket on TCP 127.0.0.1, a real stalled SUB, and the process's own RSS.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from sidecar.protocol.events import NodeOutput
from sidecar.protocol.wire import Event
from sidecar.publisher import Publisher

MB = 1 << 20


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:  # type: ignore[type-arg]
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def node_output(seq: int, payload: bytes) -> Event:
    """A job-family event (the kind the old publisher kept for a slow subscriber without limit)."""
    data = NodeOutput(node="9", output={"text": [payload.decode()]})
    return Event(seq, "run", seq, "node.output", "gpu0", "job-1", data, seq, "sc")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc to read RSS")
async def test_a_stalled_subscriber_leaves_the_sidecars_memory_bounded(ctx) -> None:
    """A SUB that is connected but never reads, while 2 x 96 MB of job events are published:
    publishing never refuses, nothing is kept for it, and the process's memory grows by about
    pub_hwm events (here 1,000 of 4 kB: 4 MB), not by what was published."""
    publisher = Publisher(ctx, "tcp://127.0.0.1:*", hwm=1000, sndbuf_bytes=4096)
    stalled = ctx.socket(zmq.SUB)
    stalled.setsockopt(zmq.RCVHWM, 10)
    stalled.setsockopt(zmq.RCVBUF, 4096)
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    stalled.connect(publisher.endpoint)
    payload = b"x" * 4096
    seqs = itertools.count(1)
    try:
        for _ in range(10_000):  # the slow joiner: publish until the SUB is subscribed
            publisher.publish(node_output(next(seqs), payload))
            if stalled.poll(1):
                break
        assert stalled.poll(0), "the SUB never received an event"
        for _ in range(2000):  # fills the stalled pipe and the kernel buffers
            publisher.publish(node_output(next(seqs), payload))
        before = rss_bytes()
        for rounds in range(1, 3):
            for _ in range(24_000):  # 24,000 x 4 kB: 96 MB
                publisher.publish(node_output(next(seqs), payload))
            grown = rss_bytes() - before
            assert grown < 24 * MB, f"RSS grew {grown / MB:.1f} MB after {rounds * 96} MB of events"
        stats = publisher.stats()
        assert stats["published"] == next(seqs) - 1 and stats["dropped"] == {} and stats["backlog"] == 0, stats
    finally:
        stalled.close(linger=0)
        publisher.close(linger_ms=0)


def test_a_publish_after_close_is_counted_not_raised(ctx) -> None:
    """Events made while the sidecar shuts down are counted in ``dropped``, by type."""
    publisher = Publisher(ctx, "inproc://closed", hwm=10)
    publisher.close(linger_ms=0)
    publisher.close(linger_ms=0)  # idempotent
    publisher.publish(node_output(1, b"x"))
    stats = publisher.stats()
    assert stats == {"published": 0, "dropped": {"node.output": 1}, "backlog": 0, "backlog_peak": 0, "hwm": 10}
