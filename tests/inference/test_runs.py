"""checks._runs (the flood fill's step, made faster for latency) against a plain loop."""

from __future__ import annotations

import numpy as np
import pytest

from triage.inference.checks import _runs, reachable


def runs_by_loop(passable: np.ndarray, seed: np.ndarray) -> np.ndarray:
    out = np.zeros_like(passable)
    lines, seeds, res = (a.reshape(-1, passable.shape[-1]) for a in (passable, seed, out))
    for line, sd, r in zip(lines, seeds, res, strict=True):
        start = 0
        while start < len(line):
            if not line[start]:
                start += 1
                continue
            end = start
            while end < len(line) and line[end]:
                end += 1
            if sd[start:end].any():
                r[start:end] = True
            start = end
    return out


@pytest.mark.parametrize("fill", [0.2, 0.6, 0.95])
def test_runs_are_the_runs_holding_a_seed(fill: float) -> None:
    rng = np.random.default_rng(int(fill * 100))
    passable = rng.random((3, 17, 23)) < fill
    seed = rng.random(passable.shape) < 0.1
    assert np.array_equal(_runs(passable, seed), runs_by_loop(passable, seed))


def test_reachable_fills_from_the_border_only() -> None:
    ring = np.ones((1, 9, 9), dtype=bool)
    ring[0, 2:7, 2:7] = False  # a wall...
    ring[0, 3:6, 3:6] = True  # ...around an inside not connected to the border
    got = reachable(ring)
    assert got[0, 0, 0] and not got[0, 4, 4] and not got[0, 2, 2]
