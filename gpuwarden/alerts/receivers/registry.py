"""The action types gpuwarden delivers to, by name, loaded lazily.

The config checks ``[[actions]] type`` against this table without importing a receiver,
and reads the keys a type requires from its class (``Receiver.required``) only for the
types a config uses. The dispatcher and replay build their receivers here. Adding a
receiver is its module in this package plus one line here (ARCHITECTURE.md, "where does
my change go").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpuwarden.registry import Registry

if TYPE_CHECKING:
    from gpuwarden.alerts.action import ActionConfig
    from gpuwarden.alerts.receivers.base import Receiver, ReceiverContext

RECEIVERS: Registry[type[Receiver]] = Registry("action type", {
    "webhook": "gpuwarden.alerts.receivers.webhook:WebhookReceiver",
    "alertmanager": "gpuwarden.alerts.receivers.alertmanager:AlertmanagerReceiver",
    "pagerduty": "gpuwarden.alerts.receivers.pagerduty:PagerDutyReceiver",
    "slack": "gpuwarden.alerts.receivers.slack:SlackReceiver",
    "exec": "gpuwarden.alerts.receivers.exec:ExecReceiver",
})


def build_receiver(action: ActionConfig, ctx: ReceiverContext) -> Receiver:
    """The receiver for an action's ``type``; ``ValueError`` for a type not in the table."""
    if action.type not in RECEIVERS:
        raise ValueError(RECEIVERS.unknown(action.type))
    return RECEIVERS.load(action.type)(action, ctx)
