"""``gpuwarden actions replay``: a delivery dead-lettered by the dispatcher is sent
again, byte for byte, through the current config's action, once."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gpuwarden.cli.actions import add_commands
from gpuwarden.storage import Store
from tests.alerts.conftest import (
    Harness,
    Recorder,
    Reply,
    action,
    dstore,
    firing,
    harness,
    make_alert,
    recorder,
)

__all__ = ["dstore", "harness", "recorder"]  # fixtures reused from the delivery tests


def test_dead_letter_then_replay(harness: Harness, recorder: Recorder, dstore: Store,
                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recorder.default = Reply(500)
    d = harness(action(url=recorder.url + "/hook"))
    d.submit([firing(make_alert())])
    assert d.wait_idle()
    assert len(recorder.requests) == 3  # FAST policy: 3 attempts
    assert d.audit is not None
    (letter,) = d.audit.dead_letters()
    assert letter.attempts == 3 and letter.last_error == "HTTP 500"
    assert d.metrics()[2].samples[0][1] == 1.0  # gpuwarden_dead_letters

    recorder.default = Reply(200)
    config = tmp_path / "gw.toml"
    config.write_text(f'node = "n1"\n[storage]\nurl = "{dstore.engine.url}"\n'
                      f'[[actions]]\nname = "hook"\ntype = "webhook"\n'
                      f'url = "{recorder.url}/hook"\n')
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["actions", "replay", "--config", str(config), "--all"])
    assert args.func(args) == 0
    assert "#1: replayed to hook" in capsys.readouterr().out
    reqs = recorder.wait(4)
    assert reqs[3].json() == reqs[0].json()  # the same delivery, byte for byte
    (after,) = d.audit.dead_letters(pending_only=False)
    assert after.replayed_at is not None and after.attempts == 4
    assert d.audit.dead_letters() == []
    assert harness.audit(result="replayed")[0].detail["dead_letter"] == 1
    # Already replayed: a second --all sends nothing.
    assert args.func(args) == 0 and len(recorder.requests) == 4
