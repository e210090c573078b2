"""An alert action as the dispatcher and the receivers read it: where to deliver, with which
guard rails (cooldown, hourly cap, dry run, escalation) and for how long to retry.

The config parser builds these from ``[[actions]]`` tables; defined here, below the
config, so that ``alerts/`` never imports the TOML parser.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Action names the default rules refer to; an action of that name is optional.
DEFAULT_ACTION_NAMES = ("notify", "warm-restart", "checkpoint-rollback")


@dataclass(frozen=True, slots=True)
class ActionConfig:
    name: str
    type: str
    url: str | None = None
    secret_env: str | None = None
    secret_file: str | None = None
    bearer_token_env: str | None = None
    routing_key_env: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    timeout: float = 10.0
    cooldown: float = 0.0
    max_per_hour: int = 0
    dry_run: bool = False
    verify: float = 0.0
    escalate_to: str | None = None
    group_wait: float = 0.0
    retry_for: float = 900.0  # keep retrying a failed delivery this long (first try to last)
