"""The daemon as an operator runs it: a real process, real HTTP, real signals, real store."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gpuwarden.storage import open_store

NODE = "test-node"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, port: int, db: Path, *, gpus: int = 2, interval: str = "200ms",
                 extra: str = "") -> None:
    path.write_text(
        f'node = "{NODE}"\ninterval = "{interval}"\nlisten = "127.0.0.1:{port}"\n'
        f'[storage]\nurl = "sqlite:///{db}"\n[gpu]\nsource = "sim"\nsim_gpus = {gpus}\n{extra}'
    )


class Proc:
    """A `gpuwarden run` subprocess, always stopped by its own PID in teardown."""

    def __init__(self, config: Path, port: int, log: Path, env: dict[str, str] | None = None):
        self.port = port
        self.log_path = log
        self.log = log.open("w")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "gpuwarden.cli.main", "run", "--config", str(config)],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen.poll() is None, self.log_path.read_text()
            try:
                if requests.get(self.url("/healthz"), timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise AssertionError("daemon never became healthy:\n" + self.log_path.read_text())

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        text = requests.get(self.url("/metrics"), timeout=2).text
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.setdefault(s.name, []).append((s.labels, s.value))
        return out

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=15)
        finally:
            self.log.close()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)
        self.log.close()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[object]:
    procs: list[Proc] = []

    def start(config: Path, port: int, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(config, port, tmp_path / f"daemon-{len(procs)}.log", env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


def wait_for(predicate: object, timeout: float = 10.0, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(step)
    raise AssertionError("condition not met in time")


def test_run_scrape_sigterm_and_data_survives(tmp_path: Path, daemon_factory: object) -> None:
    port, db, cfg = free_port(), tmp_path / "gw.db", tmp_path / "gw.toml"
    write_config(cfg, port, db, gpus=2)
    proc = daemon_factory(cfg, port)  # type: ignore[operator]
    proc.wait_healthy()
    wait_for(lambda: proc.metrics().get("gpuwarden_cycles_total", [({}, 0)])[0][1] >= 5)
    m = proc.metrics()

    util = m["gpuwarden_gpu_utilization_ratio"]
    assert sorted(labels["gpu"] for labels, _ in util) == ["0", "1"]
    for labels, value in util:
        assert set(labels) == {"node", "gpu", "uuid", "model"}
        assert labels["node"] == NODE and "simulated" in labels["model"]
        assert 0.0 <= value <= 1.0
    assert all(v == 1.0 for _, v in m["gpuwarden_gpu_up"])
    total = {lab["gpu"]: v for lab, v in m["gpuwarden_gpu_memory_total_bytes"]}
    assert total["0"] == 81559 * 1024 * 1024
    assert m["gpuwarden_collector_success"] == [({"collector": "sim"}, 1.0)]
    assert m["gpuwarden_collector_duration_seconds"][0][1] > 0
    assert m["gpuwarden_samples_written_total"][0][1] > 0
    assert {lab["reason"]: v for lab, v in m["gpuwarden_store_write_errors_total"]} == {
        "timeout": 0, "unavailable": 0, "locked": 0, "disk_full": 0, "error": 0}
    assert m["gpuwarden_cycles_skipped_total"][0][1] == 0
    assert m["gpuwarden_build_info"][0][0]["gpu_source"] == "sim"
    assert m["gpuwarden_cycle_duration_seconds"][0][1] < 0.2

    started = time.monotonic()
    assert proc.stop() == 0
    assert time.monotonic() - started < 5.0
    log = proc.log_path.read_text()
    assert "SIMULATED" in log and "stopped" in log

    store = open_store(f"sqlite:///{db}", node=NODE)
    try:
        series = store.query("gpu_utilization_ratio", {"gpu": "1"}, 0, time.time() + 1)
        assert len(series) == 1 and len(series[0]) >= 5
    finally:
        store.close()


def test_restart_finds_old_data(tmp_path: Path, daemon_factory: object) -> None:
    port, db, cfg = free_port(), tmp_path / "gw.db", tmp_path / "gw.toml"
    write_config(cfg, port, db, gpus=1)
    first = daemon_factory(cfg, port)  # type: ignore[operator]
    first.wait_healthy()
    wait_for(lambda: first.metrics().get("gpuwarden_cycles_total", [({}, 0)])[0][1] >= 3)
    # SIGKILL: no flush at all. What write() returned for must still be there.
    first.kill()
    store = open_store(f"sqlite:///{db}", node=NODE)
    before = len(store.query("gpu_up", None, 0, time.time() + 1)[0])
    store.close()
    assert before >= 3

    second = daemon_factory(cfg, port)  # type: ignore[operator]
    second.wait_healthy()
    wait_for(lambda: second.metrics().get("gpuwarden_cycles_total", [({}, 0)])[0][1] >= 2)
    assert second.stop() == 0
    store = open_store(f"sqlite:///{db}", node=NODE)
    after = len(store.query("gpu_up", None, 0, time.time() + 1)[0])
    store.close()
    assert after >= before + 2


def test_sighup_reloads_good_config_and_rejects_bad(tmp_path: Path,
                                                    daemon_factory: object) -> None:
    port, db, cfg = free_port(), tmp_path / "gw.db", tmp_path / "gw.toml"
    write_config(cfg, port, db, gpus=2)
    proc = daemon_factory(cfg, port)  # type: ignore[operator]
    proc.wait_healthy()

    def gpus() -> set[str]:
        return {lab["gpu"] for lab, _ in proc.metrics().get("gpuwarden_gpu_up", [])}

    wait_for(lambda: gpus() == {"0", "1"})
    write_config(cfg, port, db, gpus=3)
    proc.popen.send_signal(signal.SIGHUP)
    wait_for(lambda: gpus() == {"0", "1", "2"})

    cfg.write_text('interval = "sometimes"\n')
    proc.popen.send_signal(signal.SIGHUP)
    wait_for(lambda: "config reload rejected" in proc.log_path.read_text())
    time.sleep(0.5)
    assert proc.popen.poll() is None
    assert gpus() == {"0", "1", "2"}
    assert requests.get(proc.url("/healthz"), timeout=2).status_code == 200
    assert proc.stop() == 0


def write_errors(proc: Proc) -> dict[str, float]:
    """``gpuwarden_store_write_errors_total`` by reason."""
    rows = proc.metrics()["gpuwarden_store_write_errors_total"]
    return {labels["reason"]: value for labels, value in rows}


def test_locked_store_buffers_then_writes_everything(tmp_path: Path,
                                                     daemon_factory: object) -> None:
    port, db, cfg = free_port(), tmp_path / "gw.db", tmp_path / "gw.toml"
    write_config(cfg, port, db, gpus=1)
    proc = daemon_factory(cfg, port)  # type: ignore[operator]
    proc.wait_healthy()
    wait_for(lambda: proc.metrics().get("gpuwarden_samples_written_total", [({}, 0)])[0][1] > 0)

    locker = sqlite3.connect(db, timeout=0.1, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        wait_for(lambda: write_errors(proc).get("locked", 0) >= 3)
        m = proc.metrics()
        assert m["gpuwarden_store_pending_samples"][0][1] > 0
        health = requests.get(proc.url("/healthz"), timeout=2).json()
        assert health["store"] == "degraded" and health["store_pending_samples"] > 0
        assert requests.get(proc.url("/healthz"), timeout=2).status_code == 200
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    wait_for(lambda: proc.metrics()["gpuwarden_store_pending_samples"][0][1] == 0)
    m = proc.metrics()
    cycles = m["gpuwarden_cycles_total"][0][1]
    assert proc.stop() == 0
    assert m["gpuwarden_store_dropped_samples_total"][0][1] == 0
    store = open_store(f"sqlite:///{db}", node=NODE)
    try:
        stored = len(store.query("gpu_up", None, 0, time.time() + 1)[0])
    finally:
        store.close()
    # One GPU: one gpu_up sample per cycle, locked cycles included. Nothing was lost.
    assert stored >= cycles


def test_bad_storage_url_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    write_config(cfg, free_port(), tmp_path / "no" / "such" / "dir" / "gw.db")
    proc = subprocess.run([sys.executable, "-m", "gpuwarden.cli.main", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert "storage" in proc.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = tmp_path / "gw.toml"
        write_config(cfg, busy.getsockname()[1], tmp_path / "gw.db")
        proc = subprocess.run([sys.executable, "-m", "gpuwarden.cli.main", "run", "--config",
                               str(cfg)], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 1
    assert "cannot listen on" in proc.stderr


def test_sd_notify_ready_and_watchdog(tmp_path: Path, daemon_factory: object) -> None:
    port, db, cfg = free_port(), tmp_path / "gw.db", tmp_path / "gw.toml"
    write_config(cfg, port, db, gpus=1)
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(10)
        proc = daemon_factory(cfg, port, {"NOTIFY_SOCKET": str(sock_path),  # type: ignore[operator]
                                          "WATCHDOG_USEC": "5000000"})
        messages: list[str] = []
        while not (any("WATCHDOG=1" in m for m in messages)
                   and any(m.startswith("READY=1") for m in messages)):
            messages.append(sock.recv(4096).decode())  # times out (fails) after 10 s
        assert proc.stop() == 0
        messages.append(sock.recv(4096).decode())
        while True:  # drain: STOPPING=1 arrives after the last watchdog pings
            sock.settimeout(0.5)
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                break
        assert "STOPPING=1" in messages


def test_run_with_bad_config_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text('interval = "1 second"\n[gpu]\nsource = "sim"\nsim_gpu = 4\n')
    proc = subprocess.run([sys.executable, "-m", "gpuwarden.cli.main", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert "interval: bad duration" in proc.stderr
    assert "gpu.sim_gpu: unknown key" in proc.stderr


def test_first_cycle_stored_once_and_counted(tmp_path: Path, daemon_factory: object) -> None:
    """The first cycle goes to SQLite before the store opens (storage/early.py); not twice."""
    port, db, cfg = free_port(), tmp_path / "gw.db", tmp_path / "gw.toml"
    write_config(cfg, port, db, gpus=1)
    proc = daemon_factory(cfg, port)  # type: ignore[operator]
    proc.wait_healthy()
    wait_for(lambda: proc.metrics().get("gpuwarden_cycles_total", [({}, 0)])[0][1] >= 3)

    def written_once() -> bool:
        """One scrape: every sample collected so far is written, once. Writes run on the
        store's writer thread, so a scrape may catch a cycle's write in flight (written
        behind), never ahead: the first cycle written twice would keep written above
        collected for good."""
        m = proc.metrics()
        written = m["gpuwarden_samples_written_total"][0][1]
        collected = m["gpuwarden_samples_collected_total"][0][1]
        assert written <= collected, (written, collected)
        return bool(written == collected)

    wait_for(written_once)
    assert proc.stop() == 0
    assert "not stored early" not in proc.log_path.read_text()
    store = open_store(f"sqlite:///{db}", node=NODE)
    try:
        ts = store.query("gpu_up", None, 0, time.time() + 1)[0].timestamps.tolist()
    finally:
        store.close()
    assert len(ts) >= 3 and ts == sorted(set(ts))


def test_newer_schema_exits_2(tmp_path: Path) -> None:
    db, cfg = tmp_path / "gw.db", tmp_path / "gw.toml"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL PRIMARY KEY)")
        conn.execute("INSERT INTO schema_version VALUES (99)")
    write_config(cfg, free_port(), db)
    proc = subprocess.run([sys.executable, "-m", "gpuwarden.cli.main", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert "schema version 99 is newer" in proc.stderr
    with sqlite3.connect(db) as conn:  # nothing written to a database it does not know
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert tables == {"schema_version"}
