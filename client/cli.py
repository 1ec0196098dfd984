"""``qnode request`` and ``qnode listen``: the client from a shell, one JSON object per line.

``qnode.daemon.cli`` declares the options (so building the command line never imports the
client) and calls :func:`request_main` / :func:`listen_main` lazily: the daemon never imports
the client. Every run of ``qnode request`` prints an ``accepted`` line, one ``pair`` line per
pair, and ends with exactly one terminal line (``done``, ``error``, ``expired``,
``cancelled``); its exit status:

==  =========================================================================
0   DONE: every pair came
1   ERROR from the node (the line's ``code``: ``unknown_remote``, ...)
2   usage: a bad option or connection file (a message on stderr, no JSON)
3   EXPIRED: the request's ``timeout_s`` passed first
4   CANCELLED by someone else (another connection of the application)
5   the client's own: ``no_reply`` (the node is silent), ``connection_lost``
130 interrupted (SIGINT/SIGTERM): the request was cancelled
==  =========================================================================

``qnode listen`` prints a ``listening`` line, one ``pair`` line per pair, and an
``unlistened`` line when it stops (after ``--count`` pairs, or at SIGINT/SIGTERM: exit 0); a
refused LISTEN ends with an ``error`` line (exit 1), the client's own errors with 5.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TextIO

from qnode.client.connection import DEFAULT_PATH, ConnectionFileError, ConnectionInfo
from qnode.client.node import NodeClient, PairListener, PairStream
from qnode.client.results import (
    ClientError,
    Outcome,
    RequestError,
)

EXIT_DONE, EXIT_ERROR, EXIT_USAGE, EXIT_EXPIRED, EXIT_CANCELLED, EXIT_CLIENT = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130
_EXIT_BY_STATUS = {"done": EXIT_DONE, "error": EXIT_ERROR, "expired": EXIT_EXPIRED,
                   "cancelled": EXIT_CANCELLED}
#: the environment variable a password login's password is read from with --broker
PASSWORD_ENV = "QNODE_MQTT_PASSWORD"

Emit = Callable[[dict[str, Any]], None]


def _client(args: argparse.Namespace) -> NodeClient:
    """The client the options describe; ConnectionFileError / ValueError if they do not."""
    if args.broker:
        if not args.network or not args.node:
            raise ValueError("--broker needs --network and --node")
        return NodeClient(args.broker, network=args.network, application=args.app,
                          node=args.node, username=args.username,
                          password=os.environ.get(PASSWORD_ENV), ca_file=args.ca_file,
                          client_cert=args.client_cert, client_key=args.client_key,
                          reply_timeout_s=args.reply_timeout)
    info = ConnectionInfo.load(args.connection or DEFAULT_PATH)
    return NodeClient(**info.client_options(args.app, args.node),
                      reply_timeout_s=args.reply_timeout)


def _printer(out: TextIO) -> Emit:
    def emit(event: dict[str, Any]) -> None:
        out.write(json.dumps(event) + "\n")
        out.flush()
    return emit


def _run(main: Callable[[Emit], Coroutine[Any, Any, int]], args: argparse.Namespace,
         command: str) -> int:
    emit = _printer(sys.stdout)
    try:
        return asyncio.run(main(emit))
    except (ConnectionFileError, ValueError) as exc:
        print(f"qnode {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:       # before the signal handlers were in place
        return EXIT_INTERRUPTED


def _on_signals(task: asyncio.Task[Any]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)


def _client_error(emit: Emit, exc: ClientError, request_id: str | None = None) -> int:
    emit({"event": "error", "code": exc.code, "reason": exc.reason,
          **({"request_id": request_id} if request_id else {})})
    print(f"qnode: {exc.code}: {exc.reason}", file=sys.stderr)
    return EXIT_CLIENT


# ------------------------------------------------------------------ qnode request

def request_main(args: argparse.Namespace) -> int:
    """``qnode request``: ask for pairs, print each event as a JSON line."""
    async def main(emit: Emit) -> int:
        client = _client(args)
        create = client.create_measure if args.kind == "measure" else client.create_keep
        stream = create(args.remote, args.pairs, min_fidelity=args.min_fidelity,
                        timeout_s=args.timeout_s, purpose=args.purpose,
                        priority=args.priority, request_id=args.request_id)
        try:
            await client.connect()
        except ClientError as exc:
            return _client_error(emit, exc, stream.request_id)
        try:
            task = asyncio.create_task(_consume_request(stream, emit))
            _on_signals(task)
            try:
                return await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
            outcome = await stream.cancel()
            if outcome is not None and outcome.status != "cancelled":   # it ended meanwhile
                emit(_terminal(outcome))
                return _EXIT_BY_STATUS[outcome.status]
            emit({"event": "cancelled", "request_id": stream.request_id,
                  "pairs": outcome.pairs if outcome else stream.received,
                  "confirmed": outcome is not None})
            return EXIT_INTERRUPTED
        finally:
            await client.close()

    return _run(main, args, "request")


async def _consume_request(stream: PairStream, emit: Emit) -> int:
    try:
        accepted = await stream.start()
        emit({"event": "accepted", **accepted.to_dict()})
        async for pair in stream:
            emit({"event": "pair", **pair.to_dict()})
    except RequestError as exc:
        emit(_terminal(exc.outcome))
        print(f"qnode request: {exc.code}: {exc.reason}", file=sys.stderr)
        return _EXIT_BY_STATUS[exc.outcome.status]
    except ClientError as exc:
        return _client_error(emit, exc, stream.request_id)
    outcome = stream.outcome
    assert outcome is not None
    emit(_terminal(outcome))
    return EXIT_DONE


def _terminal(outcome: Outcome) -> dict[str, Any]:
    """A request's last line: ``event`` is its status (done, error, expired, cancelled)."""
    d = outcome.to_dict()
    return {"event": d.pop("status"), **d}


# ------------------------------------------------------------------ qnode listen

def listen_main(args: argparse.Namespace) -> int:
    """``qnode listen``: receive the pairs requested on a purpose, one JSON line each."""
    if args.count is not None and args.count < 1:
        print("qnode listen: --count must be at least 1", file=sys.stderr)
        return EXIT_USAGE

    async def main(emit: Emit) -> int:
        client = _client(args)
        listener = client.receive(args.purpose)
        try:
            await client.connect()
        except ClientError as exc:
            return _client_error(emit, exc)
        printed: list[int] = [0]
        try:
            task = asyncio.create_task(_consume_listen(listener, args.count, emit, printed))
            _on_signals(task)
            try:
                code = await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
                code = EXIT_DONE
            if listener.active:
                await listener.aclose()
            if code == EXIT_DONE:
                emit({"event": "unlistened", "purpose": args.purpose, "pairs": printed[0]})
            return code
        finally:
            await client.close()

    return _run(main, args, "listen")


async def _consume_listen(listener: PairListener, count: int | None, emit: Emit,
                          printed: list[int]) -> int:
    try:
        await listener.start()
        emit({"event": "listening", "purpose": listener.purpose})
        async for pair in listener:
            emit({"event": "pair", **pair.to_dict()})
            printed[0] += 1
            if count is not None and printed[0] >= count:
                break
    except RequestError as exc:
        emit({"event": "error", "code": exc.code, "reason": exc.reason})
        print(f"qnode listen: {exc.code}: {exc.reason}", file=sys.stderr)
        return EXIT_ERROR
    except ClientError as exc:
        return _client_error(emit, exc)
    return EXIT_DONE
