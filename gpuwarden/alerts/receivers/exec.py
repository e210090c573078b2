"""Exec: run a remediation command (argv, never a shell) for one alert.

The alert travels in ``GPUWARDEN_ALERT_*`` environment variables and, as the
Alertmanager webhook JSON, on stdin. The child gets a minimal environment (PATH, HOME,
locale, TZ, TMPDIR) plus those variables, never the daemon's whole environment, which
holds other actions' secrets; the variables named by the action's own ``secret_env`` /
``bearer_token_env`` are passed through because configuring them is asking for that.

It runs in its own session (process group), so on timeout the whole group is killed,
including anything the script started (``sh -c 'sleep 100'`` leaves no orphan). Exit 0
is success; non-zero or a timeout is retried like a 5xx. Resolved notices run the
command too (``GPUWARDEN_ALERT_STATUS=resolved``): scripts must look at the status.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from typing import Any

from gpuwarden.alerts.payload import webhook_body, webhook_bytes
from gpuwarden.alerts.receivers.base import Delivery, Outcome, Receiver

log = logging.getLogger(__name__)

PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
STDERR_TAIL = 200


def alert_env(entry: dict[str, Any], node: str) -> dict[str, str]:
    labels, ann = entry["labels"], entry["annotations"]
    return {
        "GPUWARDEN_ALERT_NAME": labels.get("alertname", ""),
        "GPUWARDEN_ALERT_STATUS": entry["status"],
        "GPUWARDEN_ALERT_FINGERPRINT": entry["fingerprint"],
        "GPUWARDEN_ALERT_SEVERITY": labels.get("severity", ""),
        "GPUWARDEN_ALERT_NODE": labels.get("node", node),
        "GPUWARDEN_ALERT_SERVER": labels.get("server", ""),
        "GPUWARDEN_ALERT_MODEL": labels.get("model", ""),
        "GPUWARDEN_ALERT_CURRENT_MODEL": ann.get("current_model", ""),
        "GPUWARDEN_ALERT_PREVIOUS_MODEL": ann.get("previous_model", ""),
        "GPUWARDEN_ALERT_STARTS_AT": entry["startsAt"],
        "GPUWARDEN_ALERT_LABELS_JSON": json.dumps(labels, sort_keys=True),
    }


class ExecReceiver(Receiver):
    groups = False
    required = ("command",)

    def env(self, delivery: Delivery) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        for name in (self.action.secret_env, self.action.bearer_token_env):
            if name and name in os.environ:
                env[name] = os.environ[name]
        env.update(alert_env(delivery.alerts[0], self.ctx.node))
        env["GPUWARDEN_ACTION"] = self.action.name
        env["GPUWARDEN_DELIVERY_ID"] = delivery.id
        return env

    def stdin(self, delivery: Delivery) -> bytes:
        return webhook_bytes(webhook_body(
            self.action.name, delivery.alerts,
            group_labels=dict(delivery.group_labels) or {"alertname": delivery.rule},
            external_url=self.ctx.external_url,
        ))

    def send(self, delivery: Delivery) -> Outcome:
        argv = list(self.action.command)
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                env=self.env(delivery), start_new_session=True, close_fds=True,
            )
        except OSError as exc:
            return Outcome(ok=False, error=f"cannot run {argv[0]!r}: {type(exc).__name__}",
                           reached=False)
        try:
            _, err = proc.communicate(self.stdin(delivery), timeout=self.action.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return Outcome(ok=False, retryable=True,
                           error=f"timed out after {self.action.timeout:g}s; process group "
                                 "killed")
        if proc.returncode == 0:
            return Outcome(ok=True)
        tail = err.decode(errors="replace").strip()[-STDERR_TAIL:]
        for name in (self.action.secret_env, self.action.bearer_token_env):
            value = os.environ.get(name) if name else None
            if value:
                tail = tail.replace(value, "<redacted>")
        if tail:
            log.warning("action %s: %s exited %d: %s", self.action.name, argv[0],
                        proc.returncode, tail)
        return Outcome(ok=False, retryable=True, error=f"exit status {proc.returncode}")

    def describe(self, delivery: Delivery) -> dict[str, Any]:
        env = alert_env(delivery.alerts[0], self.ctx.node)
        return {"argv": list(self.action.command), "env": sorted(env),
                "status": delivery.status}


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - unkillable (D state)
        log.error("process group %d did not die after SIGKILL", proc.pid)
