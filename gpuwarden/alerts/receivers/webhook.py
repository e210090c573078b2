"""Plain webhook: the Alertmanager webhook body, signed per Standard Webhooks.

The body is byte-for-byte what Alertmanager 0.25's webhook integration sends for the
same group (version "4"; ``payload.webhook_bytes``, checked against bodies recorded from
it), so existing Alertmanager receivers work unchanged; the README's "Alert delivery"
section lists what later Alertmanager versions write differently. With a
``secret_env`` / ``secret_file`` the request carries ``webhook-id`` (the delivery id,
identical on every retry and on replay), ``webhook-timestamp`` (this attempt) and
``webhook-signature``; the receiver can then reject forgeries and replays and drop
duplicates.
"""

from __future__ import annotations

import math

from gpuwarden.alerts.payload import load_secret, signature_headers, webhook_body, webhook_bytes
from gpuwarden.alerts.receivers.base import Delivery, HttpReceiver
from gpuwarden.errors import ReceiverError


class WebhookReceiver(HttpReceiver):
    def body(self, delivery: Delivery) -> bytes:
        return webhook_bytes(webhook_body(
            self.action.name, delivery.alerts,
            group_labels=dict(delivery.group_labels) or {"alertname": delivery.rule},
            external_url=self.ctx.external_url,
        ))

    def build(self, delivery: Delivery) -> tuple[bytes, dict[str, str]]:
        body = self.body(delivery)
        headers = self.base_headers()
        try:
            key = load_secret(self.action.secret_env, self.action.secret_file)
        except ValueError as exc:
            raise ReceiverError(str(exc)) from None
        if key is not None:
            ts = math.floor(self.ctx.clock())
            headers.update(signature_headers(key, delivery.id, ts, body))
        return body, headers
