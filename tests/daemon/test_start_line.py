"""The daemon's start line tells a newcomer where to look (README, "Two commands").

A real ``gpuwarden run`` on simulated GPUs, listening on port 0: the line must name the
port actually bound, and each address it prints must answer.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

from tests.daemon.test_daemon import Proc, write_config

START_LINE = re.compile(
    r"gpuwarden \S+ on node test-node: \d+ collectors? \((?P<collectors>[^)]*)\), "
    r"store (?P<store>\S+); metrics (?P<metrics>http://\S+/metrics), "
    r"health (?P<health>http://\S+/healthz), alerts (?P<alerts>http://\S+/api/v1/alerts)$",
    re.M)


def wait_for_start_line(log: Path, proc: Proc, timeout: float = 20.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = START_LINE.search(log.read_text())
        if found:
            return found
        assert proc.popen.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError("no start line naming the addresses:\n" + log.read_text())


def test_start_line_names_metrics_healthz_and_api_at_the_bound_port(tmp_path: Path) -> None:
    config, db, log = tmp_path / "gw.toml", tmp_path / "gw.db", tmp_path / "daemon.log"
    write_config(config, 0, db)
    proc = Proc(config, 0, log)
    try:
        line = wait_for_start_line(log, proc)
        assert line["collectors"] == "sim"
        assert line["store"] == f"sqlite:///{db}"
        (port,) = {urlsplit(line[k]).port
                   for k in ("metrics", "health", "alerts")}
        assert port not in (None, 0)  # the port bound, not the configured 0
        assert requests.get(line["health"], timeout=5).status_code == 200
        metrics = requests.get(line["metrics"], timeout=5)
        assert metrics.status_code == 200 and "gpuwarden_gpu_up" in metrics.text
        alerts = requests.get(line["alerts"], timeout=5)
        assert alerts.status_code == 200 and isinstance(alerts.json(), list)
    finally:
        assert proc.stop() == 0
