"""The node's KME: ETSI GS QKD 014 (V1.1.1) key delivery over HTTPS with mutual TLS.

Routes (``{sae}`` is an SAE id):

* ``GET /api/v1/keys/{slave_SAE_ID}/status``: the key supply for the pair (caller, slave);
* ``GET|POST /api/v1/keys/{slave_SAE_ID}/enc_keys``: the caller (master SAE, hosted here) takes
  ``number`` new keys it shares with the slave SAE (hosted at a peer node);
* ``GET|POST /api/v1/keys/{master_SAE_ID}/dec_keys``: the caller (slave SAE, hosted here) takes
  the keys the master SAE (hosted at a peer node) was given, by id.

The caller is the CN of its client certificate, verified against the configured CA during the
TLS handshake (a client without one does not get past it). A key whose master node is this node
is handed out through ``enc_keys`` here and through ``dec_keys`` at the peer, and the other way
round (:mod:`qnode.daemon.kme.store`).

Every refusal is a JSON body ``{"message": ..., "details": [{"reason": ..., ...}]}`` with 400
(bad request), 401 (caller not an SAE of this node) or 503 (no keys, or a server fault); it is
counted in :attr:`KmeServer.rejected` by reason and logged at WARNING, at most one line per
reason per ``log_interval_s``. A refused request takes no key. Key material is never logged.
docs/integrators/key-delivery.md is the integrator's view.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import re
import ssl
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

from qnode.daemon.kme.store import Key, KeysExhausted, KeyStore, KeyStoreError
from qnode.daemon.logs import RateLimitedLog
from qnode.daemon.runtime.kme_config import KmeConfig

log = logging.getLogger("qnode.kme")

#: request bodies larger than this are refused (a full dec_keys request needs < 64 KiB)
MAX_BODY_BYTES = 64 * 1024
PREFIX = "/api/v1/keys/{sae}/"
_INT_RE = re.compile(r"[+-]?[0-9]{1,9}")
_ENC_FIELDS = frozenset({"number", "size", "additional_slave_SAE_IDs", "extension_mandatory",
                         "extension_optional"})
_DEC_FIELDS = frozenset({"key_IDs", "key_IDs_extension"})
_DEC_ITEM_FIELDS = frozenset({"key_ID", "key_ID_extension"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Rejected(Exception):
    """A request refused with HTTP ``status``; ``reason`` is the counter's key."""

    def __init__(self, status: int, reason: str, message: str, **details: Any):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message
        self.details = {"reason": reason, **details}


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[:n] + "…"


def _keys_body(keys: Sequence[Key]) -> dict[str, Any]:
    return {"keys": [{"key_ID": str(k.key_id), "key": base64.b64encode(k.material).decode()}
                     for k in keys]}


class KmeServer:
    """The KME of node ``config.node_id``, serving the keys of ``store`` (see the module
    docstring). :meth:`start` binds ``config.host:config.port`` (port 0: a free port, then
    :attr:`bound_port`); :meth:`stop` closes it.

    Counters: ``rejected[reason]`` (refused requests) and ``served[endpoint]``.
    """

    def __init__(self, config: KmeConfig, store: KeyStore, *, log_interval_s: float = 10.0):
        if store.node_id != config.node_id:
            raise ValueError(f"the store is node {store.node_id!r}'s, the config "
                             f"{config.node_id!r}'s")
        if store.key_size_bits != config.key_size_bits:
            raise ValueError(f"the store's keys have {store.key_size_bits} bits, the config "
                             f"says {config.key_size_bits}")
        self.config = config
        self.store = store
        self.rejected: collections.Counter[str] = collections.Counter()
        self.served: collections.Counter[str] = collections.Counter()
        self._log = RateLimitedLog(log, log_interval_s)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self.app = web.Application(client_max_size=MAX_BODY_BYTES,
                                   middlewares=[self._errors])
        self.app.router.add_get(PREFIX + "status", self._status)
        for method in ("GET", "POST"):
            self.app.router.add_route(method, PREFIX + "enc_keys", self._enc_keys)
            self.app.router.add_route(method, PREFIX + "dec_keys", self._dec_keys)

    # -- life ------------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """The server's TLS context: its config's
        :meth:`~qnode.daemon.runtime.kme_config.KmeConfig.server_ssl_context`."""
        return self.config.server_ssl_context()

    async def start(self) -> None:
        """Listen on ``config.host:config.port`` (HTTPS)."""
        if self._runner is not None:
            raise RuntimeError("the KME server is running already")
        ctx = self.ssl_context()
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port, ssl_context=ctx)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        log.info("KME listening", extra={"kme_id": self.config.kme_id,
                                         "host": self.config.host, "port": self._port})

    async def stop(self) -> None:
        """Stop listening; requests under way are given a few seconds to finish."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def bound_port(self) -> int:
        """The port the server listens on (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("the KME server has not started")
        return self._port

    # -- refusals --------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Rejected as r:
            return self._refuse(request, r)
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(request, Rejected(
                400, "body_too_large", f"the request body exceeds {MAX_BODY_BYTES} bytes"))
        except web.HTTPException as e:
            if e.status < 400:
                raise
            # outside the API (no such route, wrong method): the standard's body all the same
            return self._refuse(request, Rejected(e.status, f"http_{e.status}", e.reason))
        except asyncio.CancelledError:
            raise
        except Exception:
            self.rejected["internal_error"] += 1
            self._log("internal_error", logging.ERROR, "KME request failed", exc_info=True)
            return web.json_response({"message": "internal error of the KME",
                                      "details": [{"reason": "internal_error"}]}, status=503)

    def _refuse(self, request: web.Request, r: Rejected) -> web.Response:
        self.rejected[r.reason] += 1
        self._log(r.reason, logging.WARNING, "KME request refused: %s", _clip(r.message),
                  reason=r.reason, status=r.status, method=request.method,
                  route=_clip(request.path))
        return web.json_response({"message": r.message, "details": [r.details]},
                                 status=r.status)

    # -- who is asking ---------------------------------------------------------------------

    def _caller(self, request: web.Request) -> str:
        """The SAE id of the caller: its certificate's CN, an SAE hosted at this node."""
        transport = request.transport
        cert = transport.get_extra_info("peercert") if transport is not None else None
        if not cert:
            raise Rejected(401, "no_certificate", "no client certificate")
        cns = [value for rdn in cert.get("subject", ()) for name, value in rdn
               if name == "commonName"]
        if len(cns) != 1:
            raise Rejected(401, "bad_certificate",
                           "the client certificate must carry exactly one CN (the SAE id)")
        sae = cns[0]
        node = self.config.node_of(sae)
        if node is None:
            raise Rejected(401, "unknown_caller", f"SAE {_clip(sae)!r} is not registered")
        if node != self.config.node_id:
            raise Rejected(401, "caller_not_hosted_here",
                           f"SAE {_clip(sae)!r} is hosted at node {node!r}, not here")
        return sae

    def _other(self, request: web.Request) -> tuple[str, str]:
        """The SAE of the URL path and its node: a registered SAE hosted at another node."""
        sae = request.match_info["sae"]
        node = self.config.node_of(sae)
        if node is None:
            raise Rejected(400, "unknown_sae", f"unknown SAE {_clip(sae)!r}", sae=_clip(sae))
        if node == self.config.node_id:
            raise Rejected(400, "sae_hosted_here",
                           f"SAE {sae!r} is hosted at this node: keys are shared only with "
                           "SAEs at other nodes", sae=sae)
        return sae, node

    # -- input -----------------------------------------------------------------------------

    @staticmethod
    def _query(request: web.Request, allowed: frozenset[str],
               repeatable: frozenset[str] = frozenset()) -> Mapping[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, value in request.query.items():
            if name not in allowed:
                raise Rejected(400, "unknown_parameter", f"unknown parameter {_clip(name)!r}")
            out.setdefault(name, []).append(value)
            if len(out[name]) > 1 and name not in repeatable:
                raise Rejected(400, "repeated_parameter", f"parameter {name!r} given twice")
        return out

    @staticmethod
    async def _json(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise Rejected(400, "malformed_json", "the body is not JSON") from None
        if not isinstance(body, dict):
            raise Rejected(400, "malformed_json", "the body must be a JSON object")
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise Rejected(400, "unknown_parameter",
                           f"unknown field {_clip(unknown[0])!r}")
        return body

    @staticmethod
    def _integer(name: str, value: object) -> int | None:
        """A JSON value's integer (None if absent); a string is not one."""
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise Rejected(400, f"{name}_not_integer", f"{name} must be an integer")

    @staticmethod
    def _query_integer(name: str, values: Sequence[str]) -> int | None:
        """A query parameter's integer (None if absent)."""
        if not values:
            return None
        if _INT_RE.fullmatch(values[0]):
            return int(values[0])
        raise Rejected(400, f"{name}_not_integer", f"{name} must be an integer")

    def _number_and_size(self, number_value: int | None,
                         size_value: int | None) -> tuple[int, int]:
        limit = self.config.max_key_per_request
        number = 1 if number_value is None else number_value
        if not 1 <= number <= limit:
            raise Rejected(400, "number_out_of_range",
                           f"number must be in [1, {limit}], not {number}",
                           max_key_per_request=limit)
        key_size = self.config.key_size_bits
        size = key_size if size_value is None else size_value
        if size % 8:
            raise Rejected(400, "size_not_multiple_of_8",
                           f"size must be a multiple of 8, not {size}")
        if size != key_size:
            raise Rejected(400, "size_unsupported",
                           f"this KME serves keys of {key_size} bits only, not {size}",
                           min_key_size=key_size, max_key_size=key_size)
        return number, size

    @staticmethod
    def _key_id(value: object) -> uuid.UUID:
        if isinstance(value, str) and len(value) <= 64:
            try:
                return uuid.UUID(value)
            except ValueError:
                pass
        raise Rejected(400, "invalid_key_id", "a key_ID must be a UUID string")

    def _key_ids(self, values: Sequence[object]) -> list[uuid.UUID]:
        if not values:
            raise Rejected(400, "missing_key_id", "no key_ID given")
        limit = self.config.max_key_per_request
        if len(values) > limit:
            raise Rejected(400, "too_many_key_ids",
                           f"at most {limit} key_IDs per request, not {len(values)}",
                           max_key_per_request=limit)
        ids = [self._key_id(v) for v in values]
        if len(set(ids)) != len(ids):
            raise Rejected(400, "duplicate_key_id", "a key_ID is given twice")
        return ids

    # -- taking ----------------------------------------------------------------------------

    async def _take(self, call: Callable[[], list[Key]]) -> list[Key]:
        try:
            return await asyncio.to_thread(call)
        except KeysExhausted as e:
            raise Rejected(503, e.reason, f"not enough keys: {e}", requested=e.requested,
                           available=e.available) from None
        except KeyStoreError as e:
            raise Rejected(400, e.reason, str(e),
                           key_ID=str(getattr(e, "key_id", ""))) from None

    @staticmethod
    def _keys_response(keys: Sequence[Key]) -> web.Response:
        return web.json_response(_keys_body(keys), headers={"Cache-Control": "no-store"})

    # -- routes ----------------------------------------------------------------------------

    async def _status(self, request: web.Request) -> web.Response:
        master = self._caller(request)
        slave, slave_node = self._other(request)
        stored = await asyncio.to_thread(self.store.count, slave_node, self.config.node_id)
        size = self.config.key_size_bits
        self.served["status"] += 1
        return web.json_response({
            "source_KME_ID": self.config.kme_id,
            "target_KME_ID": self.config.kme_id_of(slave_node),
            "master_SAE_ID": master,
            "slave_SAE_ID": slave,
            "key_size": size,
            "stored_key_count": stored,
            "max_key_count": self.config.max_key_count,
            "max_key_per_request": self.config.max_key_per_request,
            "max_key_size": size,
            "min_key_size": size,
            "max_SAE_ID_count": 0,
        })

    async def _enc_keys(self, request: web.Request) -> web.Response:
        master = self._caller(request)
        slave, slave_node = self._other(request)
        if request.method == "GET":
            query = self._query(request, frozenset({"number", "size"}))
            number, _ = self._number_and_size(
                self._query_integer("number", query.get("number", [])),
                self._query_integer("size", query.get("size", [])))
        else:
            body = await self._json(request, _ENC_FIELDS)
            self._check_extensions(body)
            number, _ = self._number_and_size(self._integer("number", body.get("number")),
                                              self._integer("size", body.get("size")))
        keys = await self._take(lambda: self.store.take_for_enc(
            slave_node, number, master_sae=master, slave_sae=slave))
        self.served["enc_keys"] += 1
        return self._keys_response(keys)

    @staticmethod
    def _check_extensions(body: Mapping[str, Any]) -> None:
        additional = body.get("additional_slave_SAE_IDs", [])
        if not isinstance(additional, list):
            raise Rejected(400, "malformed_field", "additional_slave_SAE_IDs must be a list")
        if additional:
            raise Rejected(400, "additional_slave_unsupported",
                           "additional slave SAEs are not supported (max_SAE_ID_count is 0)")
        # an empty list or object asks for no extension: accepted
        if body.get("extension_mandatory"):
            raise Rejected(400, "extension_unsupported",
                           "this KME supports no mandatory extension")
        optional = body.get("extension_optional", [])
        if not isinstance(optional, list | dict):
            raise Rejected(400, "malformed_field", "extension_optional must be a list")

    async def _dec_keys(self, request: web.Request) -> web.Response:
        slave = self._caller(request)
        master, master_node = self._other(request)
        if request.method == "GET":
            query = self._query(request, frozenset({"key_ID"}), repeatable=frozenset({"key_ID"}))
            ids = self._key_ids(query.get("key_ID", []))
        else:
            body = await self._json(request, _DEC_FIELDS)
            ids = self._key_ids(self._dec_items(body.get("key_IDs")))
        keys = await self._take(lambda: self.store.take_by_ids(
            master_node, ids, sae=slave, master_sae=master))
        self.served["dec_keys"] += 1
        return self._keys_response(keys)

    @staticmethod
    def _dec_items(items: object) -> list[object]:
        if items is None:
            raise Rejected(400, "missing_key_id", "key_IDs is required")
        if not isinstance(items, list):
            raise Rejected(400, "malformed_field", "key_IDs must be a list of objects")
        out = []
        for item in items:
            if not isinstance(item, dict) or "key_ID" not in item:
                raise Rejected(400, "missing_key_id",
                               "each entry of key_IDs must be an object with a key_ID")
            if set(item) - _DEC_ITEM_FIELDS:
                raise Rejected(400, "unknown_parameter", "unknown field in a key_IDs entry")
            out.append(item["key_ID"])
        return out
