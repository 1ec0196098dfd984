"""Which waiting request gets the next pair of a pool: the allocator's scheduling policy.

The policy (decision record 0008 in ``docs/``), applied each time a pair can be given:

1. **Eligibility.** Only requests whose ``min_fidelity`` the pair meets are candidates. A request
   the pair cannot serve is passed over, never waited on: one unservable request does not block
   the others (the head-of-line case).
2. **Priority.** Strict classes: a candidate of priority 0 is served before any of priority 1.
3. **Weighted fair share between applications** (start-time fair queueing, Goyal, Vin and
   Cheng, SIGCOMM 1996, with a pair as the unit of work). Each application ``a`` with requests
   waiting has a start tag ``S_a``: ``max(F_a, V)`` when it starts waiting, where ``F_a`` is the
   finish tag of its last pair and the virtual time ``V`` is the start tag of the pair served
   last. Among the candidates of the best priority, the application with the smallest start tag
   is served; then ``F_a = S_a + 1/w_a`` and, if it still waits, ``S_a = F_a``. While
   applications wait, each receives pairs in proportion to its weight ``w_a``; one that was idle
   gets no credit for the idle time (the ``max`` with ``V``). An application whose requests the
   pairs did not meet keeps its tag, so it is served first once a pair meets them.
4. **Arrival.** Within one application and priority, the oldest request first.

Deadlines (``expired``) and cancels (``remove``) end requests; the queue is bounded per
application and in all (``QueueFull``). Pure: no clock of its own (times are passed in, in
seconds) and no I/O.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field

#: a request's identity: (node it arrived at, application, the application's request id)
RequestKey = tuple[str, str, str]


class QueueFull(Exception):
    """The application's share of the queue, or the whole queue, is full."""


@dataclass
class Waiting:
    """A request waiting for pairs of one pool."""

    key: RequestKey
    priority: int                 # 0 is served first
    min_fidelity: float
    pairs: int                    # asked for
    deadline: float               # s, on the caller's clock
    delivered: int = 0
    #: anything the caller keeps with the request (e.g. where to reply, the purpose id)
    context: object = None
    order: int = field(default=0, compare=False)   # arrival order, set by the queue

    @property
    def application(self) -> tuple[str, str]:
        """(node, application): the unit that fair share is between."""
        return self.key[0], self.key[1]

    @property
    def remaining(self) -> int:
        return self.pairs - self.delivered


class FairQueue:
    """The waiting requests of one pool, served by the module's policy.

    ``weight(app)`` gives an application's weight (> 0; ``app`` is ``(node, application)``).
    ``max_waiting`` bounds the requests in all, ``max_per_application`` per application.
    """

    def __init__(self, weight: Callable[[tuple[str, str]], float], *, max_waiting: int = 10_000,
                 max_per_application: int = 1000):
        self.weight = weight
        self.max_waiting = max_waiting
        self.max_per_application = max_per_application
        self._waiting: dict[RequestKey, Waiting] = {}
        self._per_app: dict[tuple[str, str], int] = {}
        self._finish: dict[tuple[str, str], float] = {}
        self._start: dict[tuple[str, str], float] = {}   # applications with requests waiting
        self._virtual = 0.0
        self._arrivals = itertools.count()
        #: pairs served per application since the queue was made
        self.pairs_served: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def __iter__(self) -> Iterator[Waiting]:
        return iter(list(self._waiting.values()))

    def __contains__(self, key: Hashable) -> bool:
        return key in self._waiting

    def get(self, key: RequestKey) -> Waiting | None:
        return self._waiting.get(key)

    def add(self, w: Waiting) -> None:
        """Queue ``w``; QueueFull (naming which bound) when it does not fit, ValueError when its
        key is already waiting."""
        if w.key in self._waiting:
            raise ValueError(f"request {w.key[2]!r} of {w.key[1]} is already waiting")
        app = w.application
        if len(self._waiting) >= self.max_waiting:
            raise QueueFull(f"the node has {len(self._waiting)} requests waiting "
                            f"(the most it keeps)")
        if self._per_app.get(app, 0) >= self.max_per_application:
            raise QueueFull(f"{app[1]} has {self.max_per_application} requests waiting "
                            f"(the most one application may have)")
        w.order = next(self._arrivals)
        self._waiting[w.key] = w
        self._per_app[app] = self._per_app.get(app, 0) + 1
        if app not in self._start:   # it starts waiting: no credit for the time it did not
            self._start[app] = max(self._finish.get(app, 0.0), self._virtual)

    def remove(self, key: RequestKey) -> Waiting | None:
        """Take request ``key`` out of the queue (cancelled, expired, failed); None if absent."""
        w = self._waiting.pop(key, None)
        if w is not None:
            app = w.application
            self._per_app[app] -= 1
            if not self._per_app[app]:
                del self._per_app[app]
                del self._start[app]
        return w

    def pick(self, fidelity: float) -> Waiting | None:
        """The request that gets a pair of ``fidelity`` now (the module's policy), or None when
        no waiting request accepts it. The queue does not change until :meth:`served`."""
        best: Waiting | None = None
        best_key: tuple[int, float, int] | None = None
        for w in self._waiting.values():
            if w.min_fidelity > fidelity:
                continue
            k = (w.priority, self._start[w.application], w.order)
            if best_key is None or k < best_key:
                best, best_key = w, k
        return best

    def served(self, w: Waiting) -> bool:
        """Record one pair given to ``w`` (from :meth:`pick`); True when ``w`` now has all its
        pairs (it leaves the queue)."""
        app = w.application
        start = self._start[app]
        self._finish[app] = start + 1.0 / self.weight(app)
        self._start[app] = self._finish[app]
        self._virtual = start
        self.pairs_served[app] = self.pairs_served.get(app, 0) + 1
        w.delivered += 1
        if w.remaining <= 0:
            self.remove(w.key)
            return True
        return False

    def expired(self, now: float) -> list[Waiting]:
        """Take out and return the requests whose deadline is past at ``now``."""
        gone = [w for w in self._waiting.values() if w.deadline <= now]
        for w in gone:
            self.remove(w.key)
        return gone

    def waiting_per_application(self) -> dict[tuple[str, str], int]:
        return dict(self._per_app)
