"""An application as docs/integrators/applications.md describes it, written with paho-mqtt
alone (no qnode code), for the system tests that play applications."""
from __future__ import annotations

import itertools
import json
import queue
import time
from typing import Any

import paho.mqtt.client as mqtt

NETWORK = "demo"
#: the replies that end a request
TERMINAL = {"DONE", "ERROR", "EXPIRED", "CANCELLED", "RESULT"}


class App:
    """An application as the integrators' guide describes it: paho-mqtt, JSON envelopes
    ``{"v": 1, "type", "sender", "id", "ts", "body"}`` on ``qnet/v1/<network>/<me>/req/<node>``,
    replies on ``qnet/v1/<network>/<node>/app/<me>``."""

    def __init__(self, name: str, port: int):
        self.name = name
        self.replies: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.ids = itertools.count(1)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"qnet/v1/{NETWORK}/+/app/{name}", qos=1)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, m: Any) -> None:
        env = json.loads(m.payload)
        self.replies.put((env["type"], {**env["body"], "_ts": env["ts"]}))

    def send(self, node: str, type_: str, body: dict[str, Any]) -> None:
        env = {"v": 1, "type": type_, "sender": self.name, "id": next(self.ids),
               "ts": time.time(), "body": body}
        self.client.publish(f"qnet/v1/{NETWORK}/{self.name}/req/{node}", json.dumps(env), qos=1)

    def next(self, timeout_s: float = 60.0) -> tuple[str, dict[str, Any]]:
        return self.replies.get(timeout=timeout_s)

    def first(self, request_id: str, timeout_s: float = 60.0) -> tuple[str, dict[str, Any]]:
        """The first reply of ``request_id`` (others are kept for later)."""
        others = []
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                t, body = self.next(max(0.1, deadline - time.monotonic()))
                if body.get("request_id") == request_id:
                    return t, body
                others.append((t, body))
        finally:
            for o in others:
                self.replies.put(o)

    def until(self, request_id: str, timeout_s: float = 60.0) -> list[tuple[str, dict]]:
        """Every reply of ``request_id`` up to its terminal one (others are kept for later)."""
        out, others = [], []
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                t, body = self.next(max(0.1, deadline - time.monotonic()))
                if body.get("request_id") == request_id:
                    out.append((t, body))
                    if t in TERMINAL:
                        return out
                else:
                    others.append((t, body))
        except queue.Empty:
            raise AssertionError(f"{self.name}: no terminal reply for {request_id!r}: "
                                 f"{out}") from None
        finally:
            for o in others:
                self.replies.put(o)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def pairs_for(app: App, n: int, timeout_s: float = 60.0) -> list[dict]:
    """The next ``n`` PAIRs ``app`` receives as a listener (no request id)."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n:
        t, body = app.next(max(0.1, deadline - time.monotonic()))
        if t == "PAIR" and body.get("request_id") is None:
            got.append(body)
    return got


def ask(app: App, node: str, rid: str, wait_s: float = 60.0,
        **fields: Any) -> list[tuple[str, dict]]:
    """Send REQUEST ``rid`` and return its replies; a no_listener refusal (the peer's LISTENERS
    not yet arrived) is retried under a fresh id for up to 30 s."""
    for attempt in range(60):
        this = rid if attempt == 0 else f"{rid}.{attempt}"
        app.send(node, "REQUEST", {"request_id": this, **fields})
        replies = app.until(this, wait_s)
        if not (replies[-1][0] == "ERROR" and replies[-1][1]["code"] == "no_listener"):
            return replies
        time.sleep(0.5)
    return replies
