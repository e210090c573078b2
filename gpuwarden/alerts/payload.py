"""Wire formats shared by the receivers: the Alertmanager webhook body, its signature and
the daemon's external URL the bodies link back to.

Why the Alertmanager webhook JSON (version "4") and not a format of our own: every
receiver already written for Alertmanager (chat bridges, ticketing glue, remediation
operators) then works unchanged, and the ``fingerprint`` of each alert is the one
Alertmanager itself would compute (``model.fingerprint``).

Why Standard Webhooks for signing: it signs ``id.timestamp.body``, so a receiver can
reject replays (timestamp tolerance) and deduplicate retries (the id stays the same
across every attempt of one delivery), which a bare HMAC of the body cannot do.

Nothing in this module logs; secrets only pass through :func:`sign`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gpuwarden.address import split_host_port
from gpuwarden.alerts import gojson
from gpuwarden.alerts.alert import Alert, rfc3339
from gpuwarden.errors import SecretError

#: Alertmanager's zero time for "no end yet" in webhook bodies (Go's time.Time{}).
ZERO_TIME = "0001-01-01T00:00:00Z"
SECRET_PREFIX = "whsec_"

AlertEntry = dict[str, Any]


def json_bytes(obj: Any) -> bytes:
    """Compact, key-sorted JSON for the bodies that have no Go original to match (Slack,
    PagerDuty, Alertmanager's API); the webhook body is :func:`webhook_bytes`."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def alert_entry(
    alert: Alert,
    status: str,
    *,
    at: float,
    generator_url: str,
    extra_annotations: Mapping[str, str] | None = None,
) -> AlertEntry:
    """One alert of a delivery, with the fields of Alertmanager's webhook ``alerts[]``.

    ``startsAt`` is when the alert fired (Prometheus sends ``FiredAt``); a firing alert
    has Alertmanager's zero ``endsAt``, a resolved one the time it resolved. Times are
    RFC 3339 with milliseconds: this entry is what deliveries, dead letters and the audit
    keep and compare; :func:`webhook_body` writes the times as Go does.
    """
    starts = alert.fired_at if alert.fired_at is not None else alert.active_at
    if status == "resolved":
        ends = rfc3339(alert.resolved_at if alert.resolved_at is not None else at)
    else:
        ends = ZERO_TIME
    annotations = dict(alert.annotations)
    if extra_annotations:
        annotations.update(extra_annotations)
    return {
        "status": status,
        "labels": dict(alert.labels),
        "annotations": annotations,
        "startsAt": rfc3339(starts),
        "endsAt": ends,
        "generatorURL": generator_url,
        "fingerprint": alert.fingerprint,
    }


def _common(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    first = dict(maps[0])
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}


def label_set_string(labels: Mapping[str, str]) -> str:
    """A label set as Alertmanager writes it in a group key (``model.LabelSet.String``):
    names sorted, each value in Go's ``%q`` quoting, ``", "`` between pairs."""
    return "{" + ", ".join(f"{k}={gojson.quote(v)}" for k, v in sorted(labels.items())) + "}"


def group_key(group_labels: Mapping[str, str]) -> str:
    """Alertmanager's ``groupKey``: the route key, a colon, the group's label set.

    Every action is a receiver on Alertmanager's root route, whose key is ``{}`` (no
    matchers); a child route would add ``/{matchers}``, and gpuwarden has none.
    """
    return "{}:" + label_set_string(group_labels)


def _webhook_alert(entry: AlertEntry) -> AlertEntry:
    return {
        "status": entry["status"],
        "labels": dict(entry["labels"]),
        "annotations": dict(entry["annotations"]),
        "startsAt": gojson.rfc3339_nano(entry["startsAt"]),
        "endsAt": gojson.rfc3339_nano(entry["endsAt"]),
        "generatorURL": entry["generatorURL"],
        "fingerprint": entry["fingerprint"],
    }


def webhook_body(
    receiver: str,
    alerts: Sequence[AlertEntry],
    *,
    group_labels: Mapping[str, str],
    external_url: str,
) -> dict[str, Any]:
    """The Alertmanager webhook body (version "4") for one group of alerts, with the
    values Alertmanager 0.25 puts in it; :func:`webhook_bytes` writes it.

    The group status is ``firing`` when any alert in it fires, as Alertmanager does.
    ``receiver`` is regexp-quoted (``ops.webhook`` -> ``ops\\.webhook``) because
    Alertmanager's ``template.Data`` quotes it so. Times are Go's spelling of the same
    instants (``…20.1Z``, ``…20Z``), and a firing alert's ``endsAt`` is Go's zero time.
    """
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {
        "receiver": gojson.quote_meta(receiver),
        "status": status,
        "alerts": [_webhook_alert(a) for a in alerts],
        "groupLabels": dict(group_labels),
        "commonLabels": _common([a["labels"] for a in alerts]),
        "commonAnnotations": _common([a["annotations"] for a in alerts]),
        "externalURL": external_url,
        "version": "4",
        "groupKey": group_key(group_labels),
        "truncatedAlerts": 0,
    }


#: Alertmanager's ``webhook.Message`` in the order Go writes its fields: the embedded
#: ``*template.Data`` first (it is the struct's first field), then its own three.
MESSAGE_FIELDS = ("receiver", "status", "alerts", "groupLabels", "commonLabels",
                  "commonAnnotations", "externalURL", "version", "groupKey",
                  "truncatedAlerts")
#: ``template.Alert``'s fields in declaration order.
ALERT_FIELDS = ("status", "labels", "annotations", "startsAt", "endsAt", "generatorURL",
                "fingerprint")
#: The fields that are Go maps (``template.KV``): written with their keys sorted.
_MAP_FIELDS = frozenset({"labels", "annotations", "groupLabels", "commonLabels",
                         "commonAnnotations"})


def _go_order(obj: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    return {f: dict(sorted(obj[f].items())) if f in _MAP_FIELDS else obj[f] for f in fields}


def webhook_bytes(body: Mapping[str, Any]) -> bytes:
    """The bytes Alertmanager's ``json.NewEncoder(&buf).Encode(msg)`` writes for
    ``body`` (a :func:`webhook_body`): struct fields in Go's order, map keys sorted,
    Go's string escaping (``<`` as ``\\u003c`` ...), compact, and the newline that
    ``Encode`` ends every value with. These are the bytes sent and signed."""
    message = _go_order(body, MESSAGE_FIELDS)
    message["alerts"] = [_go_order(a, ALERT_FIELDS) for a in body["alerts"]]
    return (gojson.go_json(message) + "\n").encode()


def postable_alert(entry: AlertEntry, *, now: float, valid_for: float) -> dict[str, Any]:
    """One element of Alertmanager's ``POST /api/v2/alerts`` array.

    ``endsAt`` is always explicit, as Prometheus sends it: a firing alert is valid for
    ``valid_for`` seconds (4 x max(interval, resend)) and is pushed forward by every
    resend, so Alertmanager resolves it by itself if gpuwarden dies; a resolved alert
    carries the time it resolved.
    """
    ends = rfc3339(now + valid_for) if entry["status"] == "firing" else entry["endsAt"]
    return {
        "labels": dict(entry["labels"]),
        "annotations": dict(entry["annotations"]),
        "startsAt": entry["startsAt"],
        "endsAt": ends,
        "generatorURL": entry["generatorURL"],
    }


def delivery_id(action: str, status: str, alerts: Iterable[AlertEntry]) -> str:
    """A ``webhook-id`` that every retry (and a manual replay) of a delivery shares.

    Derived from what identifies the notification (action, status, and each alert's
    fingerprint and ``startsAt``), so the same activation always maps to the same id and
    a new activation of the same alert gets a new one.
    """
    parts = sorted(f"{a['fingerprint']}@{a['startsAt']}" for a in alerts)
    digest = hashlib.sha256("|".join([action, status, *parts]).encode()).hexdigest()
    return "msg_" + digest[:32]


# --- Standard Webhooks signing ----------------------------------------------------------


def secret_key(text: str) -> bytes:
    """The HMAC key of a configured secret.

    ``whsec_<base64>`` is the Standard Webhooks spelling: the key is the decoded bytes.
    Anything else is taken as raw text (its UTF-8 bytes), which is what most receivers
    that share a plain password expect.
    """
    text = text.strip()
    if text.startswith(SECRET_PREFIX):
        raw = text[len(SECRET_PREFIX):]
        try:
            key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise SecretError("secret starts with whsec_ but is not valid base64") from None
    else:
        key = text.encode()
    if not key:
        raise SecretError("secret is empty")
    return key


def load_secret(env: str | None, file: str | None) -> bytes | None:
    """The signing key from ``secret_env`` or ``secret_file`` (None when neither is set)."""
    if env:
        value = os.environ.get(env)
        if not value:
            raise SecretError(f"environment variable {env} is not set")
        return secret_key(value)
    if file:
        try:
            value = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretError(f"cannot read secret file {file}: {type(exc).__name__}") from None
        return secret_key(value)
    return None


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signature_headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, msg_id, timestamp, body),
    }


# --- redaction --------------------------------------------------------------------------


def origin(url: str | None) -> str:
    """``scheme://host[:port]`` of a URL: the only part of an endpoint that is logged.

    Slack webhook URLs, tokens in paths or query strings and user:password@ are secrets.
    """
    if not url:
        return "<none>"
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable url>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}"


def external_url(listen: str, node: str) -> str:
    """This daemon's base URL as receivers should see it (the node name for 0.0.0.0)."""
    try:
        host, port = split_host_port(listen)
    except ValueError:
        return f"http://{node}"
    if host in ("0.0.0.0", "::", ""):
        host = node
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
