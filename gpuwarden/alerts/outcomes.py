"""The alerting counters' label sets that are known from the config alone.

Prometheus' instrumentation practice is to export every label set known in advance at
0 (a series that first appears at 1 loses that first increment to ``increase()``, and
a Grafana panel over a series that does not exist yet shows "No data" rather than 0).
The daemon (``daemon/self_metrics.py``) exports these at 0 from its first ``/metrics``
answer, before the rule engine and the dispatcher are even up; their families' names
and help texts are here so that both spell them alike.

``gpuwarden_actions_total{action,result}``: the results are the words the dispatcher's
parts count with (``ledger.py``): the router (``routing.py``: suppressed, disabled,
escalated, no_action), the delivery workers (``receivers/worker.py``: sent, failed,
disabled, dry_run, superseded, resent, resend_failed) and the ledger's dead letters.
Which of them an action can reach follows from its config alone, so the zero set is
known at every config load.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from gpuwarden.alerts.action import ActionConfig
from gpuwarden.alerts.alert import EventKind


class CounterFamily(NamedTuple):
    name: str  # without ``gpuwarden_`` and ``_total``
    help: str


ACTIONS = CounterFamily("actions", "Alert action outcomes by action and result")
RULE_ERRORS = CounterFamily(
    "rule_errors", "Rule evaluations that failed (detector raised, input unreadable)")
ALERT_EVENTS = CounterFamily("alert_events", "Alert transitions handed to delivery")
#: ``gpuwarden_alert_events_total{kind}``: every transition the engine hands over.
EVENT_KINDS = tuple(sorted(str(k) for k in EventKind))

#: Every action, whatever it is: a firing held back by a guard rail (cooldown, hourly
#: budget, inhibition, resolved within group_wait), a notice dropped for a newer one,
#: and a delivery job that raised.
ANY_ACTION = ("failed", "suppressed", "superseded")
#: An action that really calls its endpoint; ``disabled`` only where a 410 Gone can
#: answer (not ``exec``).
CALLING = ("dead_letter", "sent")
HTTP_ONLY = ("disabled",)
#: ``dry_run = true``: what would have been sent is audited, never sent.
DRY_RUN = ("dry_run",)
#: ``verify`` with ``escalate_to``: still firing after ``verify``, handed on.
ESCALATING = ("escalated",)
#: Alertmanager's periodic resends of what is firing (and recently resolved).
RESENDING = ("resend_failed", "resent")
#: A rule naming an action that is not configured: the alert is only shown.
UNCONFIGURED = ("no_action",)


def action_results(action: ActionConfig) -> tuple[str, ...]:
    """The results ``action`` can be counted with, sorted."""
    results = list(ANY_ACTION)
    if action.dry_run:
        results += DRY_RUN
    else:
        results += CALLING
        if action.type != "exec":
            results += HTTP_ONLY
        if action.type == "alertmanager":
            results += RESENDING
        if action.verify > 0 and action.escalate_to:
            results += ESCALATING
    return tuple(sorted(results))


def action_zero_set(actions: Iterable[ActionConfig],
                    referenced: Iterable[str] = ()) -> tuple[tuple[str, str], ...]:
    """Every ``(action, result)`` the configured ``actions`` can count, and ``no_action``
    for each name in ``referenced`` (the rules' actions) that is not configured; sorted."""
    configured = {a.name: a for a in actions}
    pairs = {(name, result) for name, a in configured.items() for result in action_results(a)}
    pairs |= {(name, result) for name in referenced if name not in configured
              for result in UNCONFIGURED}
    return tuple(sorted(pairs))
