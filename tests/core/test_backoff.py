"""``sidecar.core.backoff.backoff``: exponential growth, full jitter, injected rng."""

from __future__ import annotations

import itertools

import pytest

from sidecar.core.backoff import backoff


def _take(gen, n: int) -> list[float]:
    return list(itertools.islice(gen, n))


def test_ceiling_grows_by_the_multiplier_up_to_the_maximum() -> None:
    """With rng 1.0 each delay is the ceiling: initial * multiplier**n, capped at max."""
    assert _take(backoff(1.0, 10.0, 2.0, lambda: 1.0), 7) == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_jitter_scales_the_ceiling_by_the_rng_value() -> None:
    """Full jitter: delay n is rng() * ceiling n."""
    values = iter([0.5, 0.25, 0.75, 0.5])
    assert _take(backoff(2.0, 100.0, 3.0, lambda: next(values)), 4) == [1.0, 1.5, 13.5, 27.0]


def test_delay_never_drops_below_a_tenth_of_the_initial_delay() -> None:
    """rng 0.0 still waits initial/10, so a reconnect loop never spins."""
    assert _take(backoff(0.5, 30.0, 2.0, lambda: 0.0), 5) == [0.05] * 5


@pytest.mark.parametrize("seed_values", [[0.0, 0.999, 0.3, 0.6, 0.1, 1.0, 0.42, 0.87] * 3])
def test_every_delay_stays_within_its_bounds(seed_values: list[float]) -> None:
    """Each delay lies in [initial/10, min(max, initial * multiplier**n)]."""
    values = iter(seed_values)
    delays = _take(backoff(0.1, 5.0, 1.7, lambda: next(values)), len(seed_values))
    for n, delay in enumerate(delays):
        assert 0.01 <= delay <= min(5.0, 0.1 * 1.7**n) + 1e-12


def test_generator_is_endless_and_calls_the_rng_once_per_delay() -> None:
    """The generator never stops by itself and draws exactly one random number per delay."""
    calls = []
    gen = backoff(1.0, 2.0, 2.0, lambda: calls.append(1) or 0.5)
    _take(gen, 1000)
    assert len(calls) == 1000
    assert next(gen) == 1.0
