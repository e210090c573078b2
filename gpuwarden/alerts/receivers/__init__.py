"""Receivers: where alert notices go (webhook, Alertmanager, PagerDuty, Slack, exec).

``base.py`` is one attempt and its outcome (and the retry schedule), ``worker.py`` the
delivery thread per action that retries and keeps notices in order, ``registry.py`` the
action types by name; one module per receiver. Nothing here imports this package.
"""
