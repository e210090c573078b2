"""``POST /api/v1/quality``: applications push their own quality scores.

Why: canaries see a handful of fixed prompts; an application often has a better
judge of its own traffic (an eval harness, user thumbs, a grader model). It can push
scores for a server and model, and they feed the same signals and rules as canaries:
``quality_similarity{node,server,model}`` (the ``QualityDrift`` threshold) and
``quality_canary_similarity{...,canary="external"}`` (the CUSUM chart).

What is accepted is deliberately narrow: ``{"server": str, "model": str, "score":
number in [0, 1]}`` or a list of those, nothing else. Unknown keys are rejected --
in particular no prompt, answer or free text is accepted, so the privacy rule (no
user traffic is ever stored) holds by construction, and error messages never echo
what was sent. Bodies are capped at 64 KiB and 1000 scores; several scores for one
server and model in one request are averaged into one sample (a series holds one
value per instant).

Auth: with ``api_token_env`` set, ``Authorization: Bearer <token>`` is required and
compared in constant time (``hmac.compare_digest``); a configured variable that is
empty fails closed (503) rather than silently opening the endpoint.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeAlias

from gpuwarden.errors import BadRequest
from gpuwarden.model import Sample, make_labels

MAX_BODY_BYTES = 64 * 1024
MAX_SCORES = 1000
MAX_NAME = 200
EXTERNAL_CANARY = "external"
_KEYS = frozenset({"server", "model", "score"})

if TYPE_CHECKING:
    from email.message import Message

#: A request's headers: a dict (tests), or the HTTP server's ``http.client.HTTPMessage``
#: (case-insensitive).
Headers: TypeAlias = "Mapping[str, str] | Message[str, str]"


def api_token(env_name: str | None) -> str | None:
    """The token in the variable ``env_name`` (the config's ``api_token_env``): None
    when no variable is configured, "" when it is set but empty."""
    if not env_name:
        return None
    return os.environ.get(env_name, "").strip()


def _header(headers: Headers, name: str) -> str | None:
    value = headers.get(name)
    if value is None and isinstance(headers, Mapping):
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value if isinstance(value, str) else None


def authorized(headers: Headers, token: str) -> bool:
    given = _header(headers, "Authorization") or ""
    scheme, _, credential = given.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credential.strip().encode(), token.encode())


def _name(item: Mapping[str, object], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{where}.{key}: must be a non-empty string")
    if len(value) > MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise BadRequest(f"{where}.{key}: at most {MAX_NAME} printable characters")
    return value


def parse_scores(body: bytes) -> list[tuple[str, str, float]]:
    """(server, model, score) triples; raises ValueError with a message safe to return."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("body is not valid UTF-8 JSON") from None
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise BadRequest("empty list: send at least one score")
    if len(items) > MAX_SCORES:
        raise BadRequest(f"{len(items)} scores in one request; at most {MAX_SCORES}")
    out = []
    for i, item in enumerate(items):
        where = f"[{i}]" if isinstance(doc, list) else "body"
        if not isinstance(item, dict):
            raise BadRequest(f"{where}: expected an object with server, model and score")
        unknown = sorted(set(item) - _KEYS)
        if unknown:
            raise BadRequest(f"{where}: unknown keys {', '.join(unknown)[:200]} (only server, "
                             "model and score are accepted; prompts and answers are never taken)")
        server, model = _name(item, "server", where), _name(item, "model", where)
        score = item.get("score")
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise BadRequest(f"{where}.score: must be a number in [0, 1]")
        if not math.isfinite(score) or not 0.0 <= score <= 1.0:
            raise BadRequest(f"{where}.score: must be a number in [0, 1]")
        out.append((server, model, float(score)))
    return out


def handle_quality_post(
    body: bytes,
    headers: Headers,
    *,
    token: str | None,
    sink: Callable[[list[Sample]], None],
    node: str,
    now: float | None = None,
) -> tuple[int, dict[str, object]]:
    """Validate, authorise and hand the scores to ``sink``; returns (HTTP status, JSON).

    202 accepted, 400 bad input, 401 missing or wrong token, 413 body over 64 KiB,
    503 when the token variable is empty or ``sink`` raised (e.g. store down).
    """
    if token is not None:
        if not token:
            return 503, {"error": "api_token_env is set but the variable is empty: "
                                  "the endpoint stays closed"}
        if not authorized(headers, token):
            return 401, {"error": "missing or wrong bearer token"}
    if len(body) > MAX_BODY_BYTES:
        return 413, {"error": f"body over {MAX_BODY_BYTES} bytes"}
    try:
        scores = parse_scores(body)
    except BadRequest as exc:
        return 400, {"error": str(exc)}
    ts = time.time() if now is None else now
    grouped: dict[tuple[str, str], list[float]] = {}
    for server, model, score in scores:
        grouped.setdefault((server, model), []).append(score)
    samples: list[Sample] = []
    for (server, model), values in grouped.items():
        score = sum(values) / len(values)  # one sample per series per request
        samples.append(Sample("quality_similarity",
                              make_labels(node=node, server=server, model=model), score, ts))
        samples.append(Sample("quality_canary_similarity",
                              make_labels(node=node, server=server, model=model,
                                          canary=EXTERNAL_CANARY), score, ts))
    try:
        sink(samples)
    except Exception as exc:
        return 503, {"error": f"scores not stored: {type(exc).__name__}"}
    return 202, {"accepted": len(scores)}
