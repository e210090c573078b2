"""/metrics answers with the first cycle as soon as it is stored, before the store opens.

How soon is a benchmark figure (bench/bench_daemon.py, "first stored sample -> first
/metrics answer"); what a test can pin without a clock is the order: the answer comes
while the store is not open yet, holds the stored first cycle, and the way there imports
none of the libraries that make opening the store slow.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from gpuwarden.config import parse_config
from gpuwarden.daemon import wiring
from gpuwarden.daemon.lifecycle import Daemon
from gpuwarden.storage.store import Store
from tests.daemon.test_daemon import free_port

HEAVY = ("sqlalchemy", "numpy", "scipy", "prometheus_client", "apscheduler")


def test_metrics_serves_the_stored_first_cycle_before_the_store_opens(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gw.toml"
    config.write_text(f'node = "n"\nlisten = "127.0.0.1:{port}"\n'
                      f'[storage]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n'
                      '[gpu]\nsource = "sim"\nsim_gpus = 2\n')
    code = f"""
import sqlite3, sys
import pytest
import requests
from gpuwarden.config import load_config
from gpuwarden.daemon import wiring
from gpuwarden.daemon.lifecycle import Daemon

def open_store(config):  # instead of opening it: look at what is served meanwhile
    resp = requests.get("http://127.0.0.1:{port}/metrics", timeout=10)
    health = requests.get("http://127.0.0.1:{port}/healthz", timeout=10)
    with sqlite3.connect({str(tmp_path / "gw.db")!r}) as conn:
        stored = conn.execute("SELECT count(*) FROM head_log").fetchone()[0]
    print(resp.status_code, health.status_code, stored)
    print(",".join(m for m in {HEAVY!r} if m in sys.modules))
    sys.stdout.write(resp.text)
    raise SystemExit(0)

wiring.open_store = open_store
Daemon(load_config({str(config)!r})).start()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.splitlines()
    assert out[0] == "200 200 1"  # the first cycle is in the database, and on /metrics
    assert out[1] == "", f"imported before the first /metrics answer: {out[1]}"
    body = out[2:]
    assert sorted(ln.split('gpu="')[1][0] for ln in body
                  if ln.startswith("gpuwarden_gpu_up{")) == ["0", "1"]
    assert 'gpuwarden_build_info{gpu_source="sim",node="n",' in "\n".join(body)
    # The store is not open: none of its self-metrics yet, rather than made-up zeros.
    assert not any(ln.startswith("gpuwarden_samples_written") for ln in body)


def test_the_full_snapshot_replaces_the_early_one(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    cfg = parse_config(f'node = "n"\ninterval = "10s"\nlisten = "127.0.0.1:{port}"\n'
                       f'[storage]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n'
                       '[gpu]\nsource = "sim"\nsim_gpus = 1\n', "<test>")
    early: list[str] = []
    real_open = wiring.open_store

    def open_store(config: object) -> Store:
        early.append(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        return real_open(cfg)

    monkeypatch.setattr(wiring, "open_store", open_store)
    daemon = Daemon(cfg)
    daemon.start()
    try:
        body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        daemon.shutdown()
    assert "gpuwarden_gpu_up{" in early[0] and "gpuwarden_cycles_total 0.0" in early[0]
    assert "gpuwarden_samples_written" not in early[0]
    # After start: the same first cycle, now with the store's figures and counted.
    assert "gpuwarden_cycles_total 1.0" in body
    assert "gpuwarden_samples_written_total" in body
