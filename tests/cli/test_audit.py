"""``gpuwarden audit`` over a store's audit trail, on SQLite and PostgreSQL (the
``backend`` fixture of the storage tests)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest

from gpuwarden.alerts.audit import AuditLog
from gpuwarden.cli.audit import add_commands
from tests.storage.conftest import Backend, backend

__all__ = ["backend"]  # the fixture reused from the storage tests


def test_audit_cli(backend: Backend, tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    store = backend.open(node="n1")
    log = AuditLog(store.engine)
    log.record(action="oncall", result="sent", labels={"alertname": "ServerDown"},
               fingerprint="f1", http_status=202, attempt=1)
    log.record(action="oncall", result="suppressed", labels={"alertname": "TTFTP95High"},
               fingerprint="f2", reason="inhibited by ServerDown")
    log.record(action="old", result="sent", labels={"alertname": "X"}, ts=time.time() - 7200)
    config = tmp_path / "gw.toml"
    config.write_text(f'node = "n1"\n[storage]\nurl = "{backend.url}"\n')
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())

    args = parser.parse_args(["audit", "--config", str(config), "--since", "1h"])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert "sent" in out[0] and "ServerDown{}" in out[0] and "http=202" in out[0]
    assert "(inhibited by ServerDown)" in out[1]

    args = parser.parse_args(["audit", "--config", str(config), "--since", "3h", "--json",
                              "--action", "old"])
    assert args.func(args) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["action"] == "old" and row["target"] == "X{}"

    args = parser.parse_args(["audit", "--config", str(config), "--since", "soon"])
    assert args.func(args) == 2
