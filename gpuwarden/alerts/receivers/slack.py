"""Slack incoming webhook: one human-readable line per alert in ``text``.

The webhook URL *is* the credential (anyone holding it can post), so only its origin is
ever logged. Slack answers 200 ``ok`` on success and 4xx with a short reason
(``no_team``, ``invalid_token``) on a revoked or wrong URL: permanent failures.
"""

from __future__ import annotations

from gpuwarden.alerts.payload import AlertEntry, json_bytes
from gpuwarden.alerts.receivers.base import Delivery, HttpReceiver

ICON = {"firing": ":rotating_light:", "resolved": ":white_check_mark:"}


def line(entry: AlertEntry, node: str) -> str:
    labels, ann = entry["labels"], entry["annotations"]
    where = "/".join(v for v in (labels.get("node", node), labels.get("server"),
                                 labels.get("gpu") and f"gpu{labels['gpu']}") if v)
    text = ann.get("summary") or ann.get("description") or ""
    sev = labels.get("severity")
    out = f"*{labels.get('alertname', 'alert')}* on `{where}`"
    if text:
        out += f": {text}"
    if sev and entry["status"] == "firing":
        out += f" ({sev})"
    return out


def slack_text(delivery: Delivery, node: str) -> str:
    status = delivery.status.upper()
    alerts = delivery.alerts
    head = f"{ICON.get(delivery.status, '')} [{status}"
    head += f":{len(alerts)}] " if len(alerts) > 1 else "] "
    if len(alerts) == 1:
        return head + line(alerts[0], node)
    return head + f"*{delivery.rule}*\n" + "\n".join("• " + line(a, node) for a in alerts)


class SlackReceiver(HttpReceiver):
    def build(self, delivery: Delivery) -> tuple[bytes, dict[str, str]]:
        return json_bytes({"text": slack_text(delivery, self.ctx.node)}), self.base_headers()
