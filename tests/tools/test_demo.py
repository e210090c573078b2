"""``gpuwarden demo`` as a newcomer runs it: a short run says where it listens (and the
daemon answers there, over real HTTP on loopback), prints the incident's timeline up
front, and shows at least one alert firing with its value in units."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from gpuwarden.collector.sim import SimulatedGpuCollector
from gpuwarden.tools.demo import DEMO_GPUS, Incident, SimulatedVllmState, build_incident
from tests.daemon.test_daemon import free_port

RUN_S = 40  # a short run: the first alert must fire in it
LINE = re.compile(r"^t\+\s*(?P<t>\d+) s  (?P<state>[A-Z]+)\s+(?P<text>.*)$")


def _script() -> Incident:
    return build_incident(SimulatedGpuCollector("demo-node", DEMO_GPUS),
                          [SimulatedVllmState("m", random.Random(1))])


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.status), bytes(response.read())


def _run_demo(tmp_path: Path, port: int
              ) -> tuple[int, list[str], dict[str, tuple[int, bytes]], str]:
    """Run ``gpuwarden demo`` for RUN_S seconds; while it runs, open what it says to open.

    Returns its exit code, its stdout lines, what the endpoints answered (by the last
    part of their path), and its stderr."""
    exe = Path(sys.executable).with_name("gpuwarden")
    proc = subprocess.Popen(
        [str(exe), "demo", "--duration", f"{RUN_S}s", "--listen", f"127.0.0.1:{port}",
         "--dir", str(tmp_path / "demo")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip("\n") for line in stdout),
                              daemon=True)
    reader.start()
    seen: dict[str, tuple[int, bytes]] = {}
    try:
        deadline = time.monotonic() + 30
        while not any(line.startswith("store:") for line in list(lines)):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, f"no banner in 30 s: {lines}"
            time.sleep(0.2)
        urls = [m[0] for line in list(lines) for m in [re.search(r"http://\S+", line)] if m]
        for url in urls:
            status, body = _get(url)
            seen[url.rsplit("/", 1)[-1]] = (status, body)
        proc.wait(timeout=RUN_S + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    reader.join(timeout=10)
    return proc.returncode, lines, seen, proc.stderr.read() if proc.stderr else ""


@pytest.mark.slow
def test_a_short_demo_says_where_it_listens_tells_the_story_and_fires(tmp_path: Path) -> None:
    port = free_port()
    code, lines, seen, stderr = _run_demo(tmp_path, port)
    out = "\n".join(lines)
    assert code == 0, (out, stderr)

    # Where it listens, and what to open there: the daemon answers at each address.
    assert f"listening on 127.0.0.1:{port}" in out
    base = f"http://127.0.0.1:{port}"
    for path in ("/metrics", "/api/v1/alerts", "/healthz"):
        assert f"  {base}{path} " in out
    assert seen["healthz"][0] == 200
    assert seen["alerts"][0] == 200 and isinstance(json.loads(seen["alerts"][1]), list | dict)
    assert seen["metrics"][0] == 200 and b"gpuwarden_kv_cache_usage_ratio" in seen["metrics"][1]

    # The timeline, as the demo's own script has it, before anything happens.
    script = _script()
    first_event = next(i for i, line in enumerate(lines) if LINE.match(line))
    for at, text in script.timeline():
        line = f"  t+{at:3.0f} s  {text}" + ("  [after this run ends]" if at >= RUN_S else "")
        assert line in lines[:first_event], text

    # Alerts as they change, with the time since the start and values in units.
    events = [m.groupdict() for line in lines if (m := LINE.match(line))]
    firing = [e for e in events if e["state"] == "FIRING"]
    assert firing, out
    kv = [e for e in firing if e["text"].startswith("KVCacheSaturationSoon")]
    assert len(kv) == 1, out  # one rise, one page
    assert re.search(r"vllm-0\s+KV cache usage reaches 100 % in (\d+m)?(\d+s)?$", kv[0]["text"]), kv
    assert int(kv[0]["t"]) <= RUN_S
    pending = [e for e in events if e["state"] == "PENDING"]
    assert any(re.search(r"GPU memory headroom [\d.]+ % \(< 15 %\), fires after 5m",
                         e["text"]) for e in pending), out
    steps = [e for e in events if e["state"] == "INCIDENT"]
    assert [e["text"] for e in steps] == [text for at, text in script.timeline() if at < RUN_S]
    assert re.search(r"demo over at t\+\d+ s: 1 alert\(s\) fired: KVCacheSaturationSoon "
                     r"\(vllm-0\)", out), out


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        exe = Path(sys.executable).with_name("gpuwarden")
        done = subprocess.run(
            [str(exe), "demo", "--duration", "5", "--listen", f"127.0.0.1:{port}",
             "--dir", str(tmp_path / "demo")],
            capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert f"demo: cannot start on 127.0.0.1:{port}" in done.stderr
    assert "--listen 127.0.0.1:0 takes a free port" in done.stderr


@pytest.mark.parametrize(("option", "arg", "message"), [
    ("--duration", "45x", "bad duration"),
    ("--duration", "-3", "0 or more"),
    ("--listen", "localhost", "expected HOST:PORT"),
    ("--listen", "127.0.0.1:70000", "port 70000 out of range"),
])
def test_bad_options_are_refused_before_anything_starts(option: str, arg: str,
                                                        message: str) -> None:
    exe = Path(sys.executable).with_name("gpuwarden")
    done = subprocess.run([str(exe), "demo", option, arg], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr


def test_the_readme_gives_the_demos_timeline() -> None:
    """The README's sample output has the timeline the demo prints, step for step."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for at, text in _script().timeline():
        assert f"\n  t+{at:3.0f} s  {text}\n" in readme, text


def test_the_story_starts_early_enough_for_a_short_run() -> None:
    """The KV ramp (the first alert ~10 s into it) starts in the first 15 s."""
    steps = _script().timeline()
    assert [at for at, _ in steps] == sorted(at for at, _ in steps)
    assert next(at for at, text in steps if "KV cache climbs" in text) <= 15
