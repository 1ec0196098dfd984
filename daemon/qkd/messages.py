"""The bodies of a key link's messages, as JSON Schemas (draft-07) by envelope type: the contract
(docs/integrators/asyncapi.yaml, generated from here) and the contract tap's yardstick.

``TIMES`` goes on ``tags/<link>`` (streamer → counter, :mod:`qnode.daemon.bus.timewire`); the
others on ``key/<link>``: sifting (:mod:`.session`), the sample (:mod:`.estimate`) and the block
(:mod:`.block`). The code that reads each body checks it field by field whatever the schema
says; the schemas say what a conforming peer sends.
"""
from __future__ import annotations

from typing import Any

from qnode.daemon.qkd.block import ABORT_REASONS
from qnode.daemon.qkd.session import MAX_SIFT_EVENTS

_B64 = {"type": "string", "pattern": r"^[A-Za-z0-9+/]*={0,2}$"}
_B85 = {"type": "string", "pattern": r"^[0-9A-Za-z!#$%&()*+\-;<=>?@^_`{|}~]*$"}
_UUID = {"type": "string", "pattern": r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                                      r"[0-9a-f]{12}$"}
_COUNT = {"type": "integer", "minimum": 0}
_PLAN = {"type": "object", "description": "an error-correction plan of one chunk "
                                          "(qnode.daemon.qkd.reconcile.Plan)",
         "properties": {k: {"type": "integer"} for k in ("v", "n", "family", "frame", "seed",
                                                          "frames", "punctured", "step")},
         "required": ["v", "n", "family", "frame", "seed", "frames", "punctured", "step"],
         "additionalProperties": False}
_CHUNKS = {"type": "array", "items": _COUNT, "description": "chunk numbers, increasing"}


def _obj(title: str, doc: str, props: dict[str, Any], required: list[str] | None = None
         ) -> dict[str, Any]:
    return {"title": title, "description": doc, "type": "object", "properties": props,
            "required": list(props) if required is None else required,
            "additionalProperties": False}


def message_schemas() -> dict[str, dict[str, Any]]:
    """Body schema by message type."""
    session = {**_UUID, "description": "the leader's key session"}
    block = {**_UUID, "description": "the block: uuid5(session, start)"}
    return {
        "TIMES": _obj("TIMES", "One chunk of the streaming analyzer's detection times, and "
                      "nothing else (its outcomes never leave it).", {
                          "link": {"type": "string", "minLength": 1},
                          "chunk": _COUNT,
                          "codec": {"const": "rice-b85/1"},
                          "n": _COUNT,
                          "t0_ps": {**_COUNT, "description": "the first time (ps)"},
                          "t_end_ps": {**_COUNT, "description": "no more tags before (ps)"},
                          "k": {"type": "integer", "minimum": 0, "maximum": 48,
                                "description": "the Rice parameter"},
                          "dt": {**_B85, "description": "base85 of the Rice-coded gaps"},
                          "first_index": {**_COUNT, "description": "the stream index of the "
                                          "first time (tags since the streamer started)"}}),
        "SIFT": _obj("SIFT", "Coincidences: the streamer's tags by stream index and the "
                     "leader's basis of each.", {
                         "session": session, "seq": _COUNT,
                         "n": {"type": "integer", "minimum": 0, "maximum": MAX_SIFT_EVENTS},
                         "first": _COUNT,
                         "gaps": {**_B85, "description": "base85 of zlib of the n - 1 index "
                                  "gaps, uint32 little-endian"},
                         "bases": {**_B85, "description": "base85 of zlib of n bases, one "
                                   "byte each (0 Z, 1 X)"}}),
        "SIFTED": _obj("SIFTED", "The streamer's basis for each event of a SIFT (2: the tag is "
                       "no longer held).", {
                           "session": session, "seq": _COUNT,
                           "bases": {**_B85, "description": "base85 of zlib of n bytes"}}),
        "KEY_SAMPLE": _obj("KEY_SAMPLE", "A new block of n sifted bits from sifted index start, "
                           "and the leader's bits at the sampled positions.", {
                               "session": session, "start": _COUNT, "n": _COUNT,
                               "block": block, "sample_bits": _COUNT,
                               "sample": {**_B64, "description": "base64 of the packed bits"}}),
        "KEY_SAMPLED": _obj("KEY_SAMPLED", "The follower's errors in the sample, per basis.", {
            "block": block, "sample_errors_z": _COUNT, "sample_errors_x": _COUNT}),
        "KEY_OFFER": _obj("KEY_OFFER", "Error correction: the plan and the leader's syndrome "
                          "of each chunk, and the verification hash's seed.", {
                              "block": block, "n": _COUNT, "n_x": _COUNT,
                              "qber": {"type": "number", "exclusiveMinimum": 0,
                                       "exclusiveMaximum": 0.5},
                              "plans": {"type": "array", "items": _PLAN},
                              "syndrome_bits": _COUNT, "syndrome": _B64, "verify_seed": _B64}),
        "KEY_REPLY": _obj("KEY_REPLY", "The follower decoded every chunk (ok, its error counts "
                          "and verification tag), or names the chunks that failed, or cannot "
                          "follow (ok false).", {
                              "block": block, "round": _COUNT, "ok": {"type": "boolean"},
                              "failed": _CHUNKS, "errors_z": _COUNT, "errors_x": _COUNT,
                              "tag": _B64}, required=["block"]),
        "KEY_REVEAL": _obj("KEY_REVEAL", "More padding bits of the chunks that failed; chunks "
                           "out of rounds get a new plan and syndrome.", {
                               "block": block, "round": _COUNT, "chunks": _CHUNKS,
                               "revealed_bits": _COUNT, "revealed": _B64, "replanned": _CHUNKS,
                               "plans": {"type": "array", "items": _PLAN},
                               "syndrome_bits": _COUNT, "syndrome": _B64},
                           required=["block", "round", "chunks", "revealed_bits", "revealed"]),
        "KEY_FINISH": _obj("KEY_FINISH", "The block's end: the secret length and the privacy "
                           "amplification's seed, or the abort's reason.", {
                               "block": block, "length": _COUNT, "errors_z": _COUNT,
                               "errors_x": _COUNT, "leak": _COUNT, "leak_ec": _COUNT,
                               "amplify_seed": _B64,
                               "abort": {"enum": list(ABORT_REASONS)}}, required=["block"]),
        "KEY_STORED": _obj("KEY_STORED", "The follower stored the block's keys that the leader "
                           "masters (the leader may store and hand out the block's keys now).",
                           {"block": block}),
        "KEY_COMMIT": _obj("KEY_COMMIT", "The leader stored the block's keys (the follower may "
                           "store the ones it masters now).", {"block": block}),
    }
