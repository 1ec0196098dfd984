"""Supervision: instruments on their own threads, role tasks restarted on failure
(docs/operators/instruments.md, section How the daemon treats an instrument).

One asyncio program. Two kinds of supervised things:

* :class:`ManagedInstrument`: one instrument driver (synchronous, see :mod:`qnode.drivers`) on its
  own single-thread executor (``instr-<name>``), so every driver call runs off the event loop and
  calls to one instrument are serialised. The one lock is the driver's ``transport.lock``; the
  single worker thread already orders the calls, so no second lock is needed. Its life cycle::

      OFFLINE → CONNECTING → CALIBRATING → READY        (run(); a failed open is retried
                                                        with back-off, still CONNECTING)
      READY → DEGRADED (link error) → reconnect with back-off → CALIBRATING → READY
      READY → DEGRADED (health check: device error) → READY when a health check passes
      READY → DEGRADED (its data stream stalled or failed: stream_failed()) → reconnect with
              back-off → DEGRADED until the stream's owner calls stream_ok() → READY
      any → OFFLINE on close()/aclose()

  **READY means the instrument answered.** Opening a transport proves nothing (a serial port, a
  ZeroMQ socket or a VISA session opens although the instrument behind it is hung), so a
  (re)connect ends in READY only after a request was answered on the new connection: the
  calibration when there is one, else the health check. An instrument given no health check is
  probed with its driver's ``identify()`` (every driver with one), after every (re)connect and
  every ``check_interval_s``, so an instrument that stops answering is noticed even when nothing
  else talks to it (a tagger streams without a control request for hours). A hung instrument
  therefore stays DEGRADED, its ``failures`` counting every timed-out attempt, until it answers
  again; before this rule every timeout was followed by an instant "successful" reconnect and
  READY, so a hung instrument looked ready.

  Error policy of :meth:`ManagedInstrument.call` (and of the health check):

  - :class:`~qnode.drivers.errors.Disconnected` or
    :class:`~qnode.drivers.errors.InstrumentTimeout`: the *link* is in doubt. The instrument goes
    DEGRADED, :meth:`ManagedInstrument.run` reconnects (``driver.reconnect()`` on the executor,
    bounded exponential back-off with jitter), calibrates again and returns to READY. The error
    is re-raised to the caller. While the link is down, calls fail at once with ``Disconnected``
    ("not ready") instead of queueing behind the reconnect.
  - :class:`~qnode.drivers.errors.DeviceError` or :class:`~qnode.drivers.errors.GarbledReply`
    from a call: the link is fine (the instrument answered); re-raised to the caller, the state
    is unchanged. From the *health check* they mark the instrument DEGRADED (no reconnect) until
    a later health check passes.
  - Anything else (a bug in the caller's function): re-raised, state unchanged.
  - Errors of work that uses the driver outside :meth:`ManagedInstrument.call` (a time tagger's
    stream, run by :class:`~qnode.daemon.acquisition.pipeline.AcquisitionPipeline`) are reported
    with :meth:`ManagedInstrument.stream_failed`: counted, DEGRADED, reconnected as a link error,
    and DEGRADED (not READY) after the reconnect until :meth:`ManagedInstrument.stream_ok`
    says the stream flows again. :meth:`ManagedInstrument.wait_up` lets the stream's owner
    wait for the reconnect before it restarts the stream.

  ``driver.reconnect()`` has its own short retry loop in the transport; the outer back-off here
  is the bounded one (``backoff_initial_s`` doubling up to ``backoff_max_s``, each delay drawn
  in [50 %, 100 %] of that). Give drivers a small ``reconnect_attempts`` so the executor thread
  is not held for long by one attempt.

* role tasks (:meth:`Supervisor.add_task`): coroutines restarted with back-off when they raise,
  each restart logged, counted (:attr:`Supervisor.restarts`) and reported to
  :attr:`Supervisor.restart_listeners`. A role task that returns normally is finished, not
  restarted.

:class:`Supervisor` runs both in one :class:`asyncio.TaskGroup`, says whether the node is healthy
(every instrument READY: the gate for systemd's ``READY=1``) and whether it is running (the gate
for ``WATCHDOG=1``: a degraded instrument is reconnected here and reported, not a reason for
systemd to restart the daemon; see :mod:`qnode.daemon.runtime.sdnotify`), and stops everything in
seconds on :meth:`Supervisor.stop`.

Logging: logger ``qnode.supervisor``; records carry ``extra`` fields ``instrument``, ``state``,
``error`` (instruments) and ``task``, ``restarts``, ``delay_s``, ``error`` (role tasks). A role
task that fails with an :class:`~qnode.drivers.errors.InstrumentError` (an expected fault: the
error names the instrument and the command) is logged without a traceback.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import enum
import functools
import logging
import random
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from qnode.drivers.driver import Driver
from qnode.drivers.errors import Disconnected, InstrumentError, InstrumentTimeout

log = logging.getLogger("qnode.supervisor")

T = TypeVar("T")

#: Errors after which the link is in doubt: reconnect.
LINK_ERRORS: tuple[type[InstrumentError], ...] = (Disconnected, InstrumentTimeout)


class InstrumentState(enum.Enum):
    OFFLINE = "offline"
    CONNECTING = "connecting"
    CALIBRATING = "calibrating"
    READY = "ready"
    DEGRADED = "degraded"


class Backoff:
    """Bounded exponential back-off with jitter: the n-th delay (from 0) is
    ``min(maximum, initial·2ⁿ)`` times a factor drawn uniformly in ``[1 − jitter, 1]``."""

    def __init__(self, initial_s: float, maximum_s: float, *, jitter: float = 0.5,
                 rng: Callable[[], float] = random.random):
        if not 0 < initial_s <= maximum_s:
            raise ValueError(f"need 0 < initial ≤ maximum, got {initial_s!r}, {maximum_s!r}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
        self.initial_s = float(initial_s)
        self.maximum_s = float(maximum_s)
        self.jitter = float(jitter)
        self._rng = rng
        self.attempt = 0

    def next(self) -> float:
        base = min(self.maximum_s, self.initial_s * 2.0 ** min(self.attempt, 60))
        self.attempt += 1
        return base * (1.0 - self.jitter * self._rng())

    def reset(self) -> None:
        self.attempt = 0


StateListener = Callable[["ManagedInstrument", InstrumentState, InstrumentState], None]


def identify_probe(driver: Driver) -> None:
    """The default health check: one request the instrument must answer (``identify()``)."""
    driver.identify()  # type: ignore[attr-defined]


class ManagedInstrument:
    """One instrument under supervision (see the module docstring for states and error policy).

    ``open_driver``: builds and opens the driver (runs on the instrument's thread);
    ``calibrate(driver)``: brings it to its working point after every (re)connect (e.g. set the
    oven's set point); ``health_check(driver)``: run every ``check_interval_s`` (s) while up, and
    after a (re)connect of an instrument without ``calibrate`` (None: the driver's
    ``identify()`` if it has one, :func:`identify_probe`; else no check);
    ``backoff_initial_s``/``backoff_max_s``: the reconnect back-off bounds (s).

    Observe: :attr:`state`, :attr:`state_history` (the last 256 states, starting with OFFLINE),
    :attr:`state_listeners` (``callback(instrument, old, new)``, called on the loop),
    :meth:`wait_for_state`, :meth:`wait_up`; counters :attr:`reconnects` (successful),
    :attr:`reconnect_attempts`, :attr:`failures` (link errors, failed connects/calibrations/
    health checks, stream failures; the telemetry's ``errors_total``), :attr:`last_error`;
    :attr:`stream_fault` (the error of a stream that has not flowed since it failed).
    """

    def __init__(self, name: str, open_driver: Callable[[], Driver], *,
                 calibrate: Callable[[Driver], None] | None = None,
                 health_check: Callable[[Driver], None] | None = None,
                 check_interval_s: float = 5.0, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 30.0):
        self.name = name
        self._open_driver = open_driver
        self._calibrate = calibrate
        self._health_check = health_check
        self.check_interval_s = float(check_interval_s)
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        Backoff(self.backoff_initial_s, self.backoff_max_s)  # validate now, not at 3 a.m.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"instr-{name}")
        self._driver: Driver | None = None
        self._generation = 0        # +1 on every successful (re)connect
        self._link_down = False
        self._up = False            # connected, calibrated and answering on this generation
        self._check_failed = False  # the last health check raised a device error
        self._stream_fault: BaseException | None = None
        self._closed = False
        self._running = False
        self._trouble = asyncio.Event()
        self._state = InstrumentState.OFFLINE
        self._state_changed = asyncio.Event()
        self.state_history: collections.deque[InstrumentState] = collections.deque(
            [InstrumentState.OFFLINE], maxlen=256)
        self.state_listeners: list[StateListener] = []
        self.reconnects = 0
        self.reconnect_attempts = 0
        self.failures = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ observation
    @property
    def state(self) -> InstrumentState:
        return self._state

    @property
    def driver(self) -> Driver | None:
        """The driver (None before the first connect). Use it only through :meth:`call`."""
        return self._driver

    @property
    def generation(self) -> int:
        """+1 on every successful (re)connect (see :meth:`wait_up`)."""
        return self._generation

    @property
    def stream_fault(self) -> BaseException | None:
        """The error :meth:`stream_failed` reported, until :meth:`stream_ok` (else None)."""
        return self._stream_fault

    def _up_state(self) -> InstrumentState:
        """The state of an instrument that is up: READY unless a stream fault or a failed health
        check holds it DEGRADED."""
        if self._stream_fault is not None or self._check_failed:
            return InstrumentState.DEGRADED
        return InstrumentState.READY

    def _set_state(self, new: InstrumentState, error: BaseException | None = None, *,
                   quiet: bool = False) -> None:
        """Change the state; log the transition unless ``quiet`` (the caller logs one line)."""
        old = self._state
        if new is old:
            return
        self._state = new
        self.state_history.append(new)
        if not quiet:
            level = logging.WARNING if new is InstrumentState.DEGRADED else logging.INFO
            log.log(level, "instrument %s: %s -> %s%s", self.name, old.value, new.value,
                    f" ({error})" if error is not None else "",
                    extra={"instrument": self.name, "state": new.value,
                           "error": None if error is None else str(error)})
        self._notify()
        for listener in list(self.state_listeners):
            try:
                listener(self, old, new)
            except Exception:  # a broken observer must not break the instrument
                log.exception("state listener of %s failed", self.name,
                              extra={"instrument": self.name, "state": new.value})

    def _notify(self) -> None:
        """Wake :meth:`wait_for_state` and :meth:`wait_up` waiters to look again."""
        event, self._state_changed = self._state_changed, asyncio.Event()
        event.set()

    async def wait_for_state(self, *states: InstrumentState,
                             timeout: float | None = None) -> InstrumentState:
        """Wait until the state is one of ``states``; TimeoutError after ``timeout`` s."""
        async with asyncio.timeout(timeout):
            while self._state not in states:
                await self._state_changed.wait()
        return self._state

    async def wait_ready(self, timeout: float | None = None) -> None:
        await self.wait_for_state(InstrumentState.READY, timeout=timeout)

    async def wait_up(self, after_generation: int = -1, timeout: float | None = None) -> None:
        """Wait until the instrument is up (connected, calibrated, answering; READY, or DEGRADED
        only for a stream fault or a device error) on a connection newer than
        ``after_generation`` (see :attr:`generation`, :meth:`stream_failed`). TimeoutError after
        ``timeout`` s; Disconnected once the instrument is closed."""
        async with asyncio.timeout(timeout):
            while not (self._up and self._generation > after_generation):
                if self._closed:
                    raise self._error("instrument is closed")
                await self._state_changed.wait()

    # ------------------------------------------------------------------ streams
    def stream_failed(self, error: BaseException) -> int:
        """A data stream of this instrument that runs outside :meth:`call` (a time tagger's
        tags) stalled or failed with ``error``: count it (:attr:`failures`), mark the instrument
        DEGRADED and reconnect it through the same path as a link error (back-off included). It
        stays DEGRADED after the reconnect until :meth:`stream_ok`. Returns the generation to
        pass to :meth:`wait_up` before restarting the stream. Call on the loop; the caller logs
        the event (one line), the state change is not logged again."""
        self._note_failure(error)
        self._stream_fault = error
        generation = self._generation
        if not self._closed and self._driver is not None and not self._link_down:
            self._link_down = True
            self._up = False
            self._trouble.set()
        if not self._closed:
            self._set_state(InstrumentState.DEGRADED, error, quiet=True)
        return generation

    def stream_ok(self) -> None:
        """The stream reported by :meth:`stream_failed` flows again (or its owner stopped): clear
        the fault; READY if the instrument is up and nothing else is wrong. The caller logs."""
        if self._stream_fault is None:
            return
        self._stream_fault = None
        if self._up and not self._link_down and self._state is InstrumentState.DEGRADED:
            self._set_state(self._up_state(), quiet=True)

    # ------------------------------------------------------------------ calls
    async def _exec(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the instrument's thread."""
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except RuntimeError as exc:  # executor shut down
            raise self._error("instrument is closed") from exc
        return await future

    def _error(self, message: str) -> Disconnected:
        address = getattr(getattr(self._driver, "transport", None), "address", "?")
        return Disconnected(message, instrument=self.name, address=str(address))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(driver, *args)`` on the instrument's thread; its result.

        Fails at once with Disconnected while the instrument is not up (OFFLINE, CONNECTING,
        CALIBRATING, or DEGRADED with its link down). Link errors (Disconnected,
        InstrumentTimeout) mark it DEGRADED and start a reconnect; device errors and garbled
        replies leave the state alone. Every error is re-raised.
        """
        if self._closed:
            raise self._error("instrument is closed")
        driver = self._driver
        if (driver is None or self._link_down
                or self._state not in (InstrumentState.READY, InstrumentState.DEGRADED)):
            raise self._error(f"not ready ({self._state.value})")
        generation = self._generation
        try:
            return await self._exec(fn, driver, *args)
        except LINK_ERRORS as exc:
            self._link_failed(exc, generation)
            raise

    def _note_failure(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"

    def _link_failed(self, exc: BaseException, generation: int) -> None:
        if generation != self._generation or self._link_down:
            return  # a stale call on a link already replaced, or already known
        self._note_failure(exc)
        self._link_down = True
        self._up = False
        self._set_state(InstrumentState.DEGRADED, exc)
        self._trouble.set()

    # ------------------------------------------------------------------ life cycle
    async def run(self) -> None:
        """Connect, calibrate, then keep the instrument READY until cancelled: periodic health
        checks; after a link error reconnect with back-off and calibrate again."""
        if self._running:
            raise RuntimeError(f"instrument {self.name} is already running")
        if self._closed:
            raise RuntimeError(f"instrument {self.name} is closed")
        self._running = True
        try:
            await self._bring_up()
            while True:
                timeout = self.check_interval_s if self._check_fn() is not None else None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._trouble.wait()
                if self._trouble.is_set():
                    self._trouble.clear()
                if self._link_down:
                    await self._bring_up()
                elif self._check_fn() is not None:
                    await self._check()
        finally:
            self._running = False

    def _check_fn(self) -> Callable[[Driver], None] | None:
        """The health check: the given one, else :func:`identify_probe` if the driver can
        identify itself, else None."""
        if self._health_check is not None:
            return self._health_check
        # looked up on the class: a property would run a request here, on the loop
        if self._driver is not None and callable(getattr(type(self._driver), "identify", None)):
            return identify_probe
        return None

    async def _check(self) -> None:
        driver, generation, check = self._driver, self._generation, self._check_fn()
        assert driver is not None and check is not None
        try:
            await self._exec(check, driver)
        except LINK_ERRORS as exc:
            self._link_failed(exc, generation)
        except Exception as exc:  # the device answers but is not well: degraded, no reconnect
            self._note_failure(exc)
            self._check_failed = True
            self._set_state(InstrumentState.DEGRADED, exc)
        else:
            self._check_failed = False
            if (self._state is InstrumentState.DEGRADED and self._up and not self._link_down
                    and generation == self._generation):
                self._set_state(self._up_state())

    async def _open(self) -> Driver:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._open_driver)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # Cancelled while opening: close whatever the open produces later.
            def _close_late(f: asyncio.Future[Driver]) -> None:
                if not f.cancelled() and f.exception() is None:
                    threading.Thread(target=f.result().close, daemon=True).start()
            future.add_done_callback(_close_late)
            raise

    async def _bring_up(self) -> None:
        """(Re)connect and calibrate (or, without a calibration, run the health check) until the
        instrument answers, with back-off between failed attempts; then READY (or DEGRADED while
        a stream fault is outstanding)."""
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s)
        self._up = False
        while True:
            phase = "connect"
            try:
                if self._driver is None:
                    self._set_state(InstrumentState.CONNECTING)
                    self._driver = await self._open()
                    self._connected()
                elif self._link_down:
                    phase = "reconnect"
                    self._set_state(InstrumentState.DEGRADED)
                    self.reconnect_attempts += 1
                    await self._exec(self._driver.reconnect)
                    self.reconnects += 1
                    self._connected()
                generation = self._generation
                check = self._check_fn()
                unwell: Exception | None = None
                if self._calibrate is not None:
                    phase = "calibrate"
                    self._set_state(InstrumentState.CALIBRATING)
                    await self._exec(self._calibrate, self._driver)
                elif check is not None:  # READY means it answered, not that a port opened
                    phase = "check"
                    try:
                        await self._exec(check, self._driver)
                    except LINK_ERRORS:
                        raise
                    except Exception as exc:  # it answered, but is not well: up, DEGRADED
                        unwell = exc
                if self._link_down or generation != self._generation:
                    continue  # a call or a stream failed on this connection meanwhile
                self._check_failed = unwell is not None
                if unwell is not None:
                    self._note_failure(unwell)
                self._up = True
                self._set_state(self._up_state(), unwell)
                self._notify()
                return
            except Exception as exc:
                self._note_failure(exc)
                if self._driver is not None:
                    if isinstance(exc, LINK_ERRORS):
                        self._link_down = True
                    self._set_state(InstrumentState.DEGRADED, exc)
                delay = backoff.next()
                log.warning("instrument %s: %s failed (%s); retrying in %.2f s", self.name,
                            phase, exc, delay,
                            exc_info=not isinstance(exc, InstrumentError),
                            extra={"instrument": self.name, "state": self._state.value,
                                   "error": str(exc)})
                await asyncio.sleep(delay)

    def _connected(self) -> None:
        self._generation += 1
        self._link_down = False
        self._trouble.clear()

    def close(self) -> None:
        """Stop taking calls, drop queued ones, close the driver and shut the executor down.
        Blocks at most as long as a call already running on the instrument's thread (its
        driver timeout); from the event loop prefer :meth:`aclose`."""
        self._shutdown()
        if self._driver is not None:
            self._driver.close()

    async def aclose(self, timeout_s: float = 2.0) -> None:
        """:meth:`close` without blocking the loop (waits at most ``timeout_s``)."""
        self._shutdown()
        driver = self._driver
        if driver is None:
            return
        done = asyncio.get_running_loop().create_future()

        def _resolve() -> None:
            if not done.done():
                done.set_result(None)

        def _close() -> None:
            try:
                driver.close()
            finally:
                done.get_loop().call_soon_threadsafe(_resolve)

        # A plain daemon thread: the driver's close waits for a running call (its lock).
        threading.Thread(target=_close, name=f"close-{self.name}", daemon=True).start()
        try:
            async with asyncio.timeout(timeout_s):
                await done
        except TimeoutError:
            log.warning("instrument %s: close did not finish within %.1f s", self.name,
                        timeout_s, extra={"instrument": self.name,
                                          "state": self._state.value, "error": "close timeout"})

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._set_state(InstrumentState.OFFLINE)


RestartListener = Callable[[str, BaseException, float], None]


class Supervisor:
    """Runs role tasks (restarted with back-off when they raise) and managed instruments in one
    TaskGroup.

    ``backoff_initial_s``/``backoff_max_s``: restart back-off bounds (s); a task that ran
    ``stable_after_s`` before failing starts again from the initial delay. ``stop_timeout_s``:
    how long :meth:`stop` waits for the tasks and then for each instrument to close.

    Use ``async with Supervisor() as sup:`` (start/stop) or ``await sup.start()`` …
    ``await sup.stop()``; :meth:`run` starts and waits until stopped.
    """

    def __init__(self, *, backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0,
                 stable_after_s: float = 60.0, stop_timeout_s: float = 2.0):
        Backoff(backoff_initial_s, backoff_max_s)  # validate
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self.stable_after_s = float(stable_after_s)
        self.stop_timeout_s = float(stop_timeout_s)
        self.instruments: dict[str, ManagedInstrument] = {}
        self.restarts: collections.Counter[str] = collections.Counter()
        self.last_errors: dict[str, str] = {}
        self.restart_listeners: list[RestartListener] = []
        self._roles: dict[str, Callable[[], Awaitable[None]]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._main: asyncio.Task[None] | None = None
        self._stop_requested = asyncio.Event()
        self._started = asyncio.Event()
        self._changed = asyncio.Event()
        self._stopped = False

    # ------------------------------------------------------------------ set-up
    def add_instrument(self, instrument: ManagedInstrument) -> ManagedInstrument:
        if instrument.name in self.instruments:
            raise ValueError(f"instrument {instrument.name!r} already added")
        self.instruments[instrument.name] = instrument
        instrument.state_listeners.append(lambda *_: self._changed.set())
        self._spawn(f"instrument:{instrument.name}", instrument.run)
        return instrument

    def add_task(self, name: str, coro_factory: Callable[[], Awaitable[None]]) -> None:
        """Run ``await coro_factory()`` as role task ``name``; restart it with back-off when it
        raises (CancelledError excepted). May be called before or after :meth:`start`."""
        if name in self._roles:
            raise ValueError(f"task {name!r} already added")
        self._spawn(name, coro_factory)

    def _spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        if self._stopped:
            raise RuntimeError("supervisor is stopped")
        self._roles[name] = factory
        if self._tg is not None:
            self._tasks[name] = self._tg.create_task(self._supervise(name, factory), name=name)

    # ------------------------------------------------------------------ running
    async def start(self) -> None:
        if self._main is not None:
            raise RuntimeError("supervisor already started")
        self._main = asyncio.create_task(self._run(), name="supervisor")
        waiter = asyncio.ensure_future(self._started.wait())
        await asyncio.wait({waiter, self._main}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._main.done():
            self._main.result()  # raise what broke it

    async def run(self) -> None:
        """Start (if needed) and wait until :meth:`stop`."""
        if self._main is None:
            await self.start()
        assert self._main is not None
        await asyncio.shield(self._main)

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for name, factory in self._roles.items():
                self._tasks[name] = tg.create_task(self._supervise(name, factory), name=name)
            self._started.set()
            await self._stop_requested.wait()
            for task in self._tasks.values():
                task.cancel()
        self._tg = None

    async def _supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s)
        while True:
            began = loop.time()
            try:
                await factory()
            except Exception as exc:
                if loop.time() - began >= self.stable_after_s:
                    backoff.reset()
                delay = backoff.next()
                self.restarts[name] += 1
                self.last_errors[name] = f"{type(exc).__name__}: {exc}"
                # an instrument's fault is expected and its error says which and what: no
                # traceback; anything else is a bug in the task
                log.error("task %s failed (%s); restart %d in %.2f s", name, exc,
                          self.restarts[name], delay,
                          exc_info=None if isinstance(exc, InstrumentError) else exc,
                          extra={"task": name, "restarts": self.restarts[name],
                                 "delay_s": delay, "error": str(exc)})
                for listener in list(self.restart_listeners):
                    try:
                        listener(name, exc, delay)
                    except Exception:
                        log.exception("restart listener failed", extra={"task": name})
                await asyncio.sleep(delay)
            else:
                log.info("task %s finished", name, extra={"task": name})
                return

    # ------------------------------------------------------------------ health
    @property
    def running(self) -> bool:
        """The supervisor's task group runs (tasks are being supervised)."""
        return self._main is not None and not self._main.done() and not self._stopped

    def healthy(self) -> bool:
        """True while running and every instrument is READY (the READY=1 gate)."""
        return self.running and all(i.state is InstrumentState.READY
                               for i in self.instruments.values())

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until :meth:`healthy`; False if that has not happened within ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._changed.clear()
                    if self.healthy():
                        return True
                    if self._stopped:
                        return False
                    await self._changed.wait()
        except TimeoutError:
            return False

    def tasks(self) -> dict[str, asyncio.Task[None]]:
        """The running supervised tasks by name (role tasks and ``instrument:<name>``)."""
        return dict(self._tasks)

    # ------------------------------------------------------------------ shutdown
    async def stop(self) -> None:
        """Cancel every task, then close every instrument; done within about
        2 × ``stop_timeout_s`` even if a task refuses to end."""
        if self._stopped:
            return
        self._stopped = True
        self._stop_requested.set()
        self._changed.set()
        log.info("supervisor stopping", extra={"task": "supervisor"})
        if self._main is not None:
            try:
                async with asyncio.timeout(self.stop_timeout_s):
                    await asyncio.shield(self._main)
            except TimeoutError:
                log.error("tasks did not stop within %.1f s", self.stop_timeout_s,
                          extra={"task": "supervisor", "error": "stop timeout"})
                self._main.cancel()
            except Exception:
                log.exception("supervisor task failed", extra={"task": "supervisor"})
        await asyncio.gather(*(i.aclose(self.stop_timeout_s)
                               for i in self.instruments.values()))
        log.info("supervisor stopped", extra={"task": "supervisor"})

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
