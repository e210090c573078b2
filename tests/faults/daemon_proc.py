"""A ``gpuwarden run`` subprocess as an operator sees it: /metrics, /healthz, its PID.

Simulated GPUs, loopback HTTP on a free port, a short interval. Every process is
stopped by its own PID (SIGTERM, then SIGKILL) by whoever started it; the fixtures in
``conftest.py`` do that in teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.faults.pgcluster import free_port

NODE = "fault-node"
Metrics = dict[str, list[tuple[dict[str, str], float]]]


def write_config(path: Path, *, url: str, port: int, node: str = NODE, gpus: int = 2,
                 interval: str = "200ms") -> Path:
    path.write_text(
        f'node = "{node}"\ninterval = "{interval}"\nlisten = "127.0.0.1:{port}"\n'
        f'[storage]\nurl = "{url}"\n[gpu]\nsource = "sim"\nsim_gpus = {gpus}\n'
    )
    return path


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"not within {timeout:g}s: {what}")


class DaemonProc:
    """One ``python -m gpuwarden.cli.main run --config FILE`` process."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config = config
        self.port = port
        self.log_path = log
        self._log = log.open("ab")
        env = {**os.environ, "GPUWARDEN_LOG_LEVEL": "info"}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "gpuwarden.cli.main", "run", "--config", str(config)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )
        self.pid = self.popen.pid

    @classmethod
    def on(cls, workdir: Path, url: str, name: str = "daemon", **config: Any) -> DaemonProc:
        """Write a config for ``url`` on a free port and start a daemon with it."""
        port = free_port()
        cfg = write_config(workdir / f"{name}.toml", url=url, port=port, **config)
        return cls(cfg, port, workdir / f"{name}.log")

    # ------------------------------------------------------------------ HTTP
    def get(self, path: str, timeout: float = 2.0) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.port}{path}", timeout=timeout)

    def healthz(self) -> tuple[int, dict[str, Any]]:
        resp = self.get("/healthz")
        return resp.status_code, json.loads(resp.text)

    def metrics(self) -> Metrics:
        out: Metrics = {}
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for s in family.samples:
                out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
        return out

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels``.

        A metric the daemon does not export at all fails the test: a misspelt name
        must not read as a reassuring 0.
        """
        exported = self.metrics()
        assert name in exported, f"{name} not on /metrics"
        return sum(v for lab, v in exported[name]
                   if all(lab.get(k) == x for k, x in labels.items()))

    def cycles(self) -> float:
        return self.metric("gpuwarden_cycles_total")

    # --------------------------------------------------------------- waiting
    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_healthy(self, timeout: float = 30.0) -> None:
        def healthy() -> bool:
            assert self.alive(), f"daemon exited {self.popen.returncode}:\n{self.log_text()}"
            try:
                return self.get("/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_for(healthy, timeout, f"daemon healthy\n{self.log_text()}")

    def wait_cycles(self, n: float, timeout: float = 30.0) -> None:
        wait_for(lambda: self.cycles() >= n, timeout, f"{n} cycles\n{self.log_text()}")

    def cycle_rate(self, seconds: float) -> float:
        """Cycles per second over the next ``seconds``, from gpuwarden_cycles_total."""
        c0, t0 = self.cycles(), time.monotonic()
        time.sleep(seconds)
        return (self.cycles() - c0) / (time.monotonic() - t0)

    # ------------------------------------------------------------- stopping
    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a clean stop: the writer flushes) and wait; SIGKILL past ``timeout``."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
        self.popen.wait(10)
        self._log.close()

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")
