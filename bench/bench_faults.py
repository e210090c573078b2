"""The SRE's black-box fault figures, for any checkout: ``python -m bench faults``.

Measures what the fault report of issue 11 measured, against the code of ``--tree``
(default: this repository), so that the same script run once against an older
checkout (``git worktree add /tmp/before <commit>``) and once against this one gives
the before / after figures side by side:

* a PostgreSQL frozen for 10 s (all its processes SIGSTOPped: TCP open, no answer)
  under a running daemon (200 ms interval, 2 simulated GPUs): cycles per second before
  and during the freeze, the share of ``/healthz`` answers that were 200, the write
  errors counted, the log lines written during the freeze, and whether every cycle
  ended up stored once;
* the exposition parser on a metric name followed by 10,000 and 20,000 tabs;
* a second ``gpuwarden run`` on the store of a running one: its exit code, how long it
  took, and duplicate timestamps it left in the live store.

The private PostgreSQL cluster is the fault tests' (``tests/faults/pgcluster.py``):
started on a free loopback port, stopped by PID. Every daemon is stopped by its PID.
Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.faults.pgcluster import PgCluster, find_pg_bin, free_port

FREEZE_S = 10.0
INTERVAL = "200ms"


class Daemon:
    """``gpuwarden run`` of the checkout under test, on simulated GPUs."""

    def __init__(self, tree: Path, work: Path, url: str, name: str,
                 same_as: Daemon | None = None) -> None:
        self.port: int = same_as.port if same_as else free_port()
        self.config: Path = same_as.config if same_as else work / f"{name}.toml"
        if same_as is None:
            self.config.write_text(
                f'node = "bench-faults"\ninterval = "{INTERVAL}"\n'
                f'listen = "127.0.0.1:{self.port}"\n[storage]\nurl = "{url}"\n'
                '[gpu]\nsource = "sim"\nsim_gpus = 2\n')
        self.log_path = work / f"{name}.log"
        env = {**os.environ, "PYTHONPATH": str(tree), "GPUWARDEN_LOG_LEVEL": "info"}
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "gpuwarden.cli.main", "run", "--config", str(self.config)],
                cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)

    def metrics(self) -> dict[str, float]:
        text = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[s.name] = out.get(s.name, 0.0) + s.value  # labels summed
        return out

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/healthz",
                                timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("daemon never healthy:\n" + self.log_path.read_text()[-2000:])

    def log_lines(self) -> int:
        return len(self.log_path.read_text(errors="replace").splitlines())

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(5)


def cycles(daemon: Daemon) -> float:
    try:
        return daemon.metrics().get("gpuwarden_cycles_total", float("nan"))
    except requests.RequestException:
        return float("nan")


def frozen_postgres(tree: Path) -> dict[str, Any]:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        return {"skipped": "no PostgreSQL initdb installed"}
    pg = PgCluster(bin_dir)
    work = Path(tempfile.mkdtemp(prefix="gw-bench-faults-"))
    daemon: Daemon | None = None
    try:
        pg.start()
        daemon = Daemon(tree, work, pg.url(), "frozen")
        daemon.wait_healthy()
        time.sleep(2.0)
        c0, t0 = cycles(daemon), time.monotonic()
        time.sleep(4.0)
        before = (cycles(daemon) - c0) / (time.monotonic() - t0)
        lines0 = daemon.log_lines()
        pg.freeze()
        codes: list[int] = []
        c0, t0 = cycles(daemon), time.monotonic()
        while time.monotonic() - t0 < FREEZE_S:
            try:
                codes.append(requests.get(f"http://127.0.0.1:{daemon.port}/healthz",
                                          timeout=1).status_code)
            except requests.RequestException:
                codes.append(0)
            time.sleep(0.5)
        during = (cycles(daemon) - c0) / (time.monotonic() - t0)
        log_lines = daemon.log_lines() - lines0
        pg.thaw()
        time.sleep(5.0)
        m = daemon.metrics()
        rc = daemon.stop()
        stored = _stored_cycles(pg)
        return {
            "cycles/s before": round(before, 2), "cycles/s during the freeze": round(during, 2),
            "healthz 200 during the freeze": f"{codes.count(200)}/{len(codes)}",
            "write errors counted": m.get("gpuwarden_store_write_errors_total", 0.0),
            "log lines during the freeze": log_lines,
            "cycles run / stored (gpu 0) / duplicates": stored_vs(m, stored),
            "exit code on SIGTERM": rc,
        }
    finally:
        if daemon is not None:
            daemon.stop()
        pg.destroy()


def _stored_cycles(pg: PgCluster) -> list[int]:
    """Timestamps (ms) of GPU 0's gpu_up samples in head log and chunks, as stored."""
    import psycopg

    from gpuwarden.storage import codec

    out: list[int] = []
    with psycopg.connect(pg.conninfo()) as conn:
        row = conn.execute("SELECT id FROM series WHERE signal = 'gpu_up' AND labels LIKE "
                           "'%\"gpu\":\"0\"%'").fetchone()
        if row is None:
            return out
        sid = int(row[0])
        for (data,) in conn.execute("SELECT data FROM chunks WHERE series_id = %s", (sid,)):
            ts, _ = codec.decode_chunk(bytes(data))
            out.extend(int(t) for t in ts)
        for (data,) in conn.execute("SELECT data FROM head_log"):
            ids, ts, _ = codec.decode_cycle(bytes(data))
            out.extend(int(t) for t, i in zip(ts.tolist(), ids.tolist(), strict=True)
                       if i == sid)
    return out


def stored_vs(m: dict[str, float], stored: list[int]) -> str:
    return (f"{m.get('gpuwarden_cycles_total', 0):.0f} / {len(stored)} / "
            f"{len(stored) - len(set(stored))}")


def parser_tabs(tree: Path) -> dict[str, Any]:
    code = (
        "import time\nfrom gpuwarden.collector.promtext import parse\n"
        "for n in (10_000, 20_000):\n"
        "    body = b'vllm:num_requests_running' + b'\\t' * n + b'\\nup 1\\n'\n"
        "    t = time.perf_counter()\n"
        "    try:\n        parse(body, max_seconds=60)\n    except Exception:\n        pass\n"
        "    print(n, round((time.perf_counter() - t) * 1000, 2))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(tree)}, check=True)
    return {f"name + {n} tabs": f"{ms} ms" for n, ms in
            (line.split() for line in done.stdout.splitlines())}


def second_instance(tree: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="gw-bench-faults-"))
    url = f"sqlite:///{work / 'gw.db'}"
    first = Daemon(tree, work, url, "first")
    try:
        first.wait_healthy()
        time.sleep(1.0)
        started = time.monotonic()
        second = Daemon(tree, work, url, "second", same_as=first)  # the same config file
        rc = second.popen.wait(30)
        took = time.monotonic() - started
        first.stop()
        from gpuwarden.storage import open_store

        store = open_store(url, node="bench-faults")
        try:
            ts = [t for s in store.query("gpu_up", {"gpu": "0"}) for t in s.timestamps]
        finally:
            store.close()
        said = second.log_path.read_text(errors="replace").splitlines()
        why = [line for line in said if "another gpuwarden" in line or "cannot listen" in line]
        return {"second instance exit code": rc, "seconds to exit": round(took, 2),
                "duplicate timestamps in the live store": len(ts) - len(set(ts)),
                "what it said": (why or said or [""])[0][-150:]}
    finally:
        first.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench faults")
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1],
                        help="checkout whose gpuwarden is measured (default: this one)")
    args = parser.parse_args()
    tree = args.tree.resolve()
    print(f"## fault figures of {tree}\n")
    for title, measure in (("PostgreSQL frozen for 10 s", frozen_postgres),
                           ("parser, a name followed by tabs", parser_tabs),
                           ("second instance on a live SQLite store", second_instance)):
        print(f"### {title}\n")
        for key, value in measure(tree).items():
            print(f"- {key}: {value}")
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
