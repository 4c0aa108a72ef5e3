"""A discrete-event model of the reading queue: readers take the most urgent waiting study.

Time is counted in whole milliseconds (integers, so equal times compare equal and the run is
deterministic). Each study arrives (it is complete and on the worklist) at its arrival time,
waits, and is read by the first reader free, for its read duration. Whenever a reader is free
and studies wait, the reader takes the study with the smallest key *at that moment*: the key
may change with time (aging raises a waiting study's score), so ``key_at(i, now)`` is asked
again for every study whose key may have changed since it was last asked. It answers the key
and the next time at which the key can change (None: never again), which keeps the run
``O(changes x log n)`` instead of re-keying every waiting study at every decision.

At one instant, arrivals and readers finishing are taken in first, then free readers choose.
Readers are identical and always on duty.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: (study index, now in ms) -> (the study's key now, the next time in ms it may change or None)
KeyAt = Callable[[int, int], tuple[tuple[Any, ...], int | None]]


@dataclass(frozen=True)
class QueueItem:
    arrival_ms: int  # when the study is on the worklist (complete)
    read_ms: int  # how long one reader takes to read it


def run_reading_queue(items: Sequence[QueueItem], readers: int, key_at: KeyAt) -> list[int]:
    """The time (ms) each item's read starts, in the items' order. ``readers`` >= 1."""
    if readers < 1:
        raise ValueError("at least one reader is needed")
    n = len(items)
    arrivals = sorted(range(n), key=lambda i: (items[i].arrival_ms, i))
    starts = [-1] * n
    version = [0] * n
    ready: list[tuple[tuple[Any, ...], int, int]] = []  # (key, item, version)
    changes: list[tuple[int, int, int]] = []  # (time, item, version)
    busy: list[int] = []  # finish times of the readers at work
    free = readers
    waiting = 0
    nxt = 0  # the next arrival, in arrival order

    def keyed(i: int, now: int) -> None:
        key, change = key_at(i, now)
        heapq.heappush(ready, (key, i, version[i]))
        if change is not None:
            heapq.heappush(changes, (max(change, now + 1), i, version[i]))

    while nxt < n or waiting:
        candidates = []
        if nxt < n:
            candidates.append(items[arrivals[nxt]].arrival_ms)
        if waiting and busy:
            candidates.append(busy[0])
        now = min(candidates)
        while busy and busy[0] <= now:
            heapq.heappop(busy)
            free += 1
        while nxt < n and items[arrivals[nxt]].arrival_ms <= now:
            keyed(arrivals[nxt], now)
            waiting += 1
            nxt += 1
        while free and waiting:
            while changes and changes[0][0] <= now:
                _, i, v = heapq.heappop(changes)
                if starts[i] < 0 and v == version[i]:
                    version[i] += 1
                    keyed(i, now)
            _, i, v = heapq.heappop(ready)
            if starts[i] >= 0 or v != version[i]:
                continue  # stale: re-keyed since, or read already
            starts[i] = now
            free -= 1
            waiting -= 1
            heapq.heappush(busy, now + items[i].read_ms)
    return starts
