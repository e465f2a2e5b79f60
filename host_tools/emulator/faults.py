"""Fault injection and behaviour knobs: one catalogue used by the enrollment file, `--fault` and `set_faults()`.

Faults are set globally (CLI / Python API / top-level `faults` of the enrollment file) or per enrollment; the
enrollment's value wins for its devices. Counted faults (`count`, default 1) are consumed per registration id
(DPS) or device id (gateway), so a client that retries eventually gets through; `"count": "always"` never runs
out. Every form is normalised here once, so the endpoints only see one shape per fault.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import jsonschema

_COUNT = {"oneOf": [{"type": "integer", "minimum": 1}, {"const": "always"}]}
_RETRY = {"type": "integer", "minimum": 0, "maximum": 86400}
_THROTTLE = {
    "oneOf": [
        {"type": "integer", "minimum": 1},
        {"type": "object", "additionalProperties": False, "properties": {"count": _COUNT, "retry_after": _RETRY}},
    ]
}
_CONNACK_CODE = {"type": "integer", "minimum": 1, "maximum": 5}
_REFUSE = {
    "oneOf": [
        _CONNACK_CODE,
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["code"],
            "properties": {"code": _CONNACK_CODE, "count": _COUNT},
        },
    ]
}
DROP_POINTS = ["connack", "suback", "register", "202", "mid_payload"]

# name -> (JSON schema of the value, one-line description). The description feeds `--help` and the docs.
CATALOGUE: dict[str, tuple[dict, str]] = {
    # --- DPS behaviour knobs (not faults, but set the same way)
    "retry_after": (_RETRY, "seconds in the retry-after of 202 answers (default 1)"),
    "assigning_polls": (
        {"type": "integer", "minimum": 0, "maximum": 1000},
        "polls answered 202 'assigning' before the final 200 (default 0)",
    ),
    "auth_failure": (
        {"enum": ["401", 401, "connack", "connack_5", "connack_4"]},
        "bad/expired DPS token or refused X.509 certificate: accept and answer 401 (default), or refuse: connack "
        "(=5), connack_4",
    ),
    "unknown_registration": (
        {"enum": ["401", 401, "404", 404, "connack", "connack_5", "connack_4"]},
        "no enrollment for the registration: 401 (default), 404, connack (=5), connack_4",
    ),
    "sas_clock_skew_s": (
        {"type": "integer", "minimum": 0, "maximum": 3600},
        "seconds an expired token is still accepted (default 0)",
    ),
    # --- DPS faults
    "refuse_csr": (
        {"enum": [400040, 400041, 400042, 400043]},
        "answer a register request's CSR 400 with this errorCode, as DPS refuses a CSR it cannot sign",
    ),
    "throttle_register": (_THROTTLE, "answer register requests 429 (count, retry_after)"),
    "throttle_poll": (_THROTTLE, "answer polls 429 (count, retry_after)"),
    "server_error": (
        {
            "oneOf": [
                {"type": "integer", "minimum": 500, "maximum": 599},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "status": {"type": "integer", "minimum": 500, "maximum": 599},
                        "count": _COUNT,
                        "on": {"enum": ["register", "poll"]},
                        "retry_after": _RETRY,
                    },
                },
            ]
        },
        "answer with a 5xx (status 503, count, on register|poll, optional retry_after)",
    ),
    "delay_ms": ({"type": "integer", "minimum": 0, "maximum": 600_000}, "delay every DPS answer"),
    "drop_after": (
        {
            "oneOf": [
                {"enum": DROP_POINTS},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["at"],
                    "properties": {"at": {"enum": DROP_POINTS}, "count": _COUNT},
                },
            ]
        },
        "close the DPS connection after connack|suback|register|202, or mid_payload (half of the final 200)",
    ),
    "malformed_json": (
        {
            "oneOf": [
                {"type": "boolean"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"count": _COUNT, "at": {"enum": ["202", "200"]}},
                },
            ]
        },
        "send a truncated JSON body (final 200 by default)",
    ),
    "omit_fields": (
        {"type": "array", "items": {"type": "string", "minLength": 1}},
        "drop these registrationState fields (dotted paths, e.g. trustBundle.etag)",
    ),
    "trust_bundle_null": ({"type": "boolean"}, 'send "trustBundle": null to preview clients'),
    "extra_fields": (
        {"type": "object"},
        "add these fields to the final registrationState (unknown fields, issuedClientCertificate, ...)",
    ),
    "pem_format": (
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {"line_length": {"enum": [64, 76]}, "newline": {"enum": ["crlf", "lf"]}},
        },
        "PEM in the trust bundle: line_length 64 (default) or 76, newline crlf (default) or lf",
    ),
    "interim_answer": (
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {"status": {"enum": ["assigning", "unassigned"]}, "http_status": {"enum": [200, 202]}},
        },
        "'assigning' poll answers: status assigning|unassigned, on topic 202 (default) or 200",
    ),
    "retry_after_case": ({"enum": ["lower", "upper", "title"]}, "spell retry-after / RETRY-AFTER / Retry-After"),
    "topic_param_order": ({"enum": ["rid_first", "retry_first"]}, "put retry-after before $rid in topics"),
    "connack_refuse": (_REFUSE, "refuse DPS CONNECTs with this return code (code, count)"),
    "no_retry_after": ({"type": "boolean"}, "omit retry-after from 202 and 429 answers"),
    # --- gateway faults
    "gateway_refuse": (_REFUSE, "refuse gateway CONNECTs with this return code (code, count)"),
    "gateway_drop_after": (
        {
            "oneOf": [
                {"const": "connack"},
                {"type": "integer", "minimum": 1},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "at": {"enum": ["connack", "message"]},
                        "messages": {"type": "integer", "minimum": 1},
                        "count": _COUNT,
                    },
                },
            ]
        },
        "close the gateway connection after CONNACK, or on the Nth telemetry message before its PUBACK",
    ),
}

GLOBAL_ONLY = {"unknown_registration"}

FAULTS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {name: schema for name, (schema, _) in CATALOGUE.items()},
}

DEFAULTS = {
    "retry_after": 1,
    "assigning_polls": 0,
    "auth_failure": "401",
    "unknown_registration": "401",
    "sas_clock_skew_s": 0,
}


class FaultError(ValueError):
    """An unknown fault or a bad value; the message names the fault."""


def _counted(value: dict, **defaults) -> dict:
    out = dict(defaults)
    out.update(value)
    out.setdefault("count", 1)
    return out


def normalise(name: str, value: Any) -> Any:
    """One canonical shape per fault (validated beforehand)."""
    if name in ("throttle_register", "throttle_poll"):
        return _counted({"count": value} if isinstance(value, int) else value, retry_after=1)
    if name == "server_error":
        return _counted({"status": value} if isinstance(value, int) else value, status=503, on="register")
    if name == "drop_after":
        return _counted({"at": value} if isinstance(value, str) else value)
    if name == "malformed_json":
        if value is False:
            return None
        return _counted({} if value is True else value, at="200")
    if name in ("connack_refuse", "gateway_refuse"):
        return _counted({"code": value} if isinstance(value, int) else value)
    if name == "gateway_drop_after":
        if value == "connack":
            return {"at": "connack", "count": 1}
        if isinstance(value, int):
            return {"at": "message", "messages": value, "count": 1}
        out = _counted(value, messages=1)
        out.setdefault("at", "message")
        return out
    if name in ("auth_failure", "unknown_registration"):
        return {"connack": "connack_5"}.get(str(value), str(value))
    if name in ("trust_bundle_null", "no_retry_after") and value is False:
        return None
    return value


def validate_faults(faults: Any, where: str = "faults") -> dict:
    """Validate and normalise a faults object; errors name the offending fault."""
    if faults is None:
        return {}
    if not isinstance(faults, dict):
        raise FaultError(f"{where}: must be an object of fault name -> value")
    for name, value in faults.items():
        if name not in CATALOGUE:
            raise FaultError(f"{where}.{name}: unknown fault (known: {', '.join(sorted(CATALOGUE))})")
        try:
            jsonschema.validate(value, CATALOGUE[name][0])
        except jsonschema.ValidationError as exc:
            raise FaultError(f"{where}.{name}: invalid value {json.dumps(value)} ({CATALOGUE[name][1]})") from exc
    normalised = {name: normalise(name, value) for name, value in faults.items()}
    return {name: value for name, value in normalised.items() if value is not None}


def parse_fault_option(text: str) -> tuple[str, Any]:
    """`name=value` (value: JSON, else a bare string) or `name` alone (true)."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep:
        return name, True
    raw = raw.strip()
    try:
        return name, json.loads(raw)
    except json.JSONDecodeError:
        return name, raw


@dataclass
class FaultSet:
    """The faults in force for one device: values plus where each came from (for per-origin counters)."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)

    @classmethod
    def combine(
        cls, global_faults: dict, global_tag: str, enrollment_faults: dict | None, enrollment_tag: str = "enrollment"
    ) -> FaultSet:
        values = {**DEFAULTS}
        origins = {name: "default" for name in DEFAULTS}
        for source, tag in ((global_faults, global_tag), (enrollment_faults or {}, enrollment_tag)):
            for name, value in source.items():
                values[name] = value
                origins[name] = tag
        return cls(values, origins)

    def get(self, name: str, default=None):
        return self.values.get(name, default)


class FaultBook:
    """Counts how often each counted fault has fired per subject (registration id or device id)."""

    def __init__(self):
        self._used: dict[tuple, int] = {}
        self._lock = threading.Lock()

    def consume(self, faults: FaultSet, name: str, subject: str, when=None):
        """If `name` is active for `subject` and not used up (and `when(value)` holds), count one use and return
        the fault's value; else None."""
        value = faults.get(name)
        if value is None or (when is not None and not when(value)):
            return None
        count = value.get("count", 1) if isinstance(value, dict) else 1
        key = (faults.origins.get(name), subject, name, json.dumps(value, sort_keys=True))
        with self._lock:
            used = self._used.get(key, 0)
            if count != "always" and used >= count:
                return None
            self._used[key] = used + 1
        return value

    def reset(self):
        with self._lock:
            self._used.clear()


class RateLimiter:
    """Token bucket: at most `rate` operations per second with a burst of max(1, rate)."""

    def __init__(self, rate: float, clock=time.monotonic):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate, self.capacity, self._clock = rate, max(1.0, rate), clock
        self._tokens, self._last = self.capacity, clock()
        self._lock = threading.Lock()

    def try_acquire(self) -> tuple[bool, int]:
        """(allowed, seconds to wait before retrying when not allowed)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True, 0
            return False, max(1, math.ceil((1 - self._tokens) / self.rate))


def describe() -> list[tuple[str, str]]:
    return [(name, description) for name, (_, description) in CATALOGUE.items()]
