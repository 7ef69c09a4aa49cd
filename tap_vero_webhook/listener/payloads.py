"""Turning a request body into events: strict JSON, the right shape, or a precise refusal."""

from __future__ import annotations

import json
import math

DEFAULT_MAX_BODY_BYTES = 20 * 1000 * 1000
"""Stitch's cap on a webhook body, and ours by default."""

MAX_DEPTH = 128
"""Deepest nesting accepted. Vero's events nest 4 levels; what is accepted must stay
readable by every reader downstream (the tap, the target), whose recursion limits
are not ours to know, so the limit is far below theirs, not at Python's."""


class PayloadError(ValueError):
    """The body is not one or more events; `code` names the reason for logs and metrics."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _refuse_constant(name: str) -> None:
    raise PayloadError("invalid_json", f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise PayloadError("number_out_of_range", f"the number {text[:40]} is too large")
    return value


def _object_without_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise PayloadError(
            "duplicate_key", f"the key {duplicate[:80]!r} appears twice in an object"
        )
    return result


_JSON_TYPE_NAMES = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def json_type_name(value: object) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


_decoder = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicate_keys,
    parse_constant=_refuse_constant,
    parse_float=_finite_float,
)


def _depth(document: object) -> int:
    """How deeply arrays and objects nest in `document` (a scalar is 0)."""
    deepest, pending = 0, [(document, 1)]
    while pending:
        value, depth = pending.pop()
        children = value.values() if isinstance(value, dict) else value
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in children)
    return deepest


def parse_events(body: bytes) -> list[dict]:
    """The events in `body`: one JSON object, or a non-empty array of objects.

    Refuses, with a `PayloadError`: an empty body, invalid UTF-8, a byte-order mark,
    anything json.loads would not read under strict RFC 8259 (NaN, Infinity,
    duplicate keys, numbers too large for a double, nesting deeper than MAX_DEPTH).
    """
    if not body.strip():
        raise PayloadError("empty_body", "the request body is empty; send one JSON event")
    if body.startswith(b"\xef\xbb\xbf"):
        raise PayloadError("invalid_json", "the body starts with a byte-order mark")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(
            "invalid_utf8", f"the body is not valid UTF-8 (byte {exc.start})"
        ) from None
    try:
        document = _decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(
            "invalid_json", f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise PayloadError("too_deep", "the JSON is nested too deeply") from None
    except ValueError as exc:  # ints past Python's digit limit
        if isinstance(exc, PayloadError):
            raise
        raise PayloadError("number_out_of_range", "a number in the body is too long") from None
    if body.count(b"{") + body.count(b"[") > MAX_DEPTH and _depth(document) > MAX_DEPTH:
        raise PayloadError("too_deep", f"the JSON is nested deeper than {MAX_DEPTH} levels")
    if isinstance(document, dict):
        return [document]
    if isinstance(document, list):
        if not document:
            raise PayloadError("wrong_shape", "the array is empty; send at least one event")
        for index, item in enumerate(document):
            if not isinstance(item, dict):
                raise PayloadError(
                    "wrong_shape",
                    f"item {index} of the array is a JSON {json_type_name(item)}, not an object",
                )
        return document
    raise PayloadError(
        "wrong_shape",
        f"the body is a JSON {json_type_name(document)}; send an object or an array of objects",
    )


def encode_event(event: dict) -> bytes:
    """The event as compact JSON text (UTF-8), exactly the values that were posted.

    Raises `PayloadError` for text the spool could not hold as UTF-8 (lone surrogates).
    """
    try:
        return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError(
            "invalid_unicode", "a string holds a lone surrogate escape (\\ud800-\\udfff)"
        ) from None
    except RecursionError:
        raise PayloadError("too_deep", "the JSON is nested too deeply") from None
