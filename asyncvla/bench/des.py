"""A minimal discrete-event simulation kernel (process-oriented, like SimPy; standard library only).

A *process* is a generator that yields ``Event``s and is resumed with the event's value once it
fires. Time advances only between events: ``Sim.now`` jumps to the next scheduled callback.

* ``sim.timeout(d)``: fires ``d`` seconds from now;
* ``any_of`` / ``all_of``: fire when one / every event has fired;
* ``Mutex``: one holder at a time, FIFO; ``acquire_all`` takes several in a fixed (sorted) order,
  so two processes needing overlapping sets never deadlock;
* ``Store``: a FIFO queue with optional capacity (``put`` fires once the item is accepted).

Ties at the same instant run in scheduling order (a sequence number), so a run is deterministic
given its random draws.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Generator, Iterable
from typing import Any


class Event:
    __slots__ = ("sim", "triggered", "value", "callbacks")

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.triggered = False
        self.value: Any = None
        self.callbacks: list[Callable[[Event], None]] = []

    def succeed(self, value: Any = None) -> Event:
        if self.triggered:
            return self
        self.triggered = True
        self.value = value
        for cb in self.callbacks:
            self.sim.at(self.sim.now, cb, self)
        self.callbacks = []
        return self

    def on(self, cb: Callable[[Event], None]) -> None:
        if self.triggered:
            self.sim.at(self.sim.now, cb, self)
        else:
            self.callbacks.append(cb)


class Sim:
    def __init__(self) -> None:
        self.now = 0.0
        self._q: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.stopped = False

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._q, (t, self._seq, fn, args))

    def event(self) -> Event:
        return Event(self)

    def timeout(self, delay: float, value: Any = None) -> Event:
        e = Event(self)
        self.at(self.now + max(0.0, delay), lambda: e.succeed(value))
        return e

    def process(self, gen: Generator[Event, Any, Any]) -> Event:
        """Start a process; the returned event fires with its return value when it ends."""
        done = Event(self)

        def resume(value: Any) -> None:
            try:
                ev = gen.send(value)
            except StopIteration as stop:
                done.succeed(stop.value)
                return
            ev.on(lambda e: resume(e.value))

        self.at(self.now, resume, None)
        return done

    def run(self, until: float = float("inf")) -> None:
        while self._q and not self.stopped:
            t, _, fn, args = self._q[0]
            if t > until:
                self.now = until
                return
            heapq.heappop(self._q)
            self.now = t
            fn(*args)


def any_of(sim: Sim, events: Iterable[Event]) -> Event:
    """Fires (with the first event that fired) as soon as one of ``events`` has fired."""
    out = Event(sim)
    for e in events:
        e.on(lambda ev: out.succeed(ev))
    return out


def all_of(sim: Sim, events: Iterable[Event]) -> Event:
    events = list(events)
    out = Event(sim)
    left = [len(events)]
    if not events:
        return out.succeed([])

    def one(_: Event) -> None:
        left[0] -= 1
        if left[0] == 0:
            out.succeed([e.value for e in events])

    for e in events:
        e.on(one)
    return out


class Mutex:
    """One holder at a time; waiters are served first come, first served."""

    def __init__(self, sim: Sim, name: str = "") -> None:
        self.sim = sim
        self.name = name
        self.held = False
        self.waiters: deque[Event] = deque()
        self.busy_s = 0.0
        self._since = 0.0

    def acquire(self) -> Event:
        e = Event(self.sim)
        if not self.held:
            self.held = True
            self._since = self.sim.now
            e.succeed()
        else:
            self.waiters.append(e)
        return e

    def release(self) -> None:
        self.busy_s += self.sim.now - self._since
        if self.waiters:
            self._since = self.sim.now
            self.waiters.popleft().succeed()
        else:
            self.held = False


def hold(sim: Sim, mutexes: list[Mutex], seconds: float) -> Generator[Event, Any, None]:
    """Sub-process: take every mutex (sorted by name), keep them ``seconds``, release them."""
    ordered = sorted(mutexes, key=lambda m: m.name)
    for m in ordered:
        yield m.acquire()
    yield sim.timeout(seconds)
    for m in reversed(ordered):
        m.release()


class Store:
    """FIFO queue; ``put`` fires when the item is in (at most ``capacity`` items), ``get`` with it."""

    def __init__(self, sim: Sim, capacity: int | None = None) -> None:
        self.sim = sim
        self.capacity = capacity
        self.items: deque[Any] = deque()
        self.getters: deque[Event] = deque()
        self.putters: deque[tuple[Event, Any]] = deque()

    def put(self, item: Any) -> Event:
        e = Event(self.sim)
        self.putters.append((e, item))
        self._settle()
        return e

    def get(self) -> Event:
        e = Event(self.sim)
        self.getters.append(e)
        self._settle()
        return e

    def _settle(self) -> None:
        while True:
            if self.putters and (self.capacity is None or len(self.items) < self.capacity):
                e, item = self.putters.popleft()
                self.items.append(item)
                e.succeed()
                continue
            if self.getters and self.items:
                self.getters.popleft().succeed(self.items.popleft())
                continue
            return
