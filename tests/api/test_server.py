"""HTTP endpoints and the exposition, in-process with real HTTP on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from gpuwarden.api.exposition import Exposition, Snapshot
from gpuwarden.collector.base import Collector
from gpuwarden.config import parse_config
from gpuwarden.daemon.lifecycle import Daemon
from gpuwarden.errors import CollectorError
from gpuwarden.model import Sample, SelfMetric, make_labels
from tests.daemon.test_daemon import free_port


class Scripted(Collector):
    """Returns the next scripted batch each cycle; an exception instance is raised."""

    def __init__(self, name: str, batches: list[list[Sample] | Exception]) -> None:
        self.name = name
        self.batches = batches

    def collect(self) -> Iterable[Sample]:
        batch = self.batches.pop(0) if len(self.batches) > 1 else self.batches[0]
        if isinstance(batch, Exception):
            raise batch
        return batch


def gpu_up(gpu: str) -> Sample:
    labels = make_labels(node="n", gpu=gpu, uuid=f"GPU-{gpu}", model="H100")
    return Sample("gpu_up", labels, 1.0, time.time())


def config(tmp_path: Path, interval: str = "100ms") -> object:
    return parse_config(f'node = "n"\ninterval = "{interval}"\nlisten = "127.0.0.1:{free_port()}"'
                        f'\n[storage]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n', "<test>")


def names(body: bytes, metric: str) -> list[dict[str, str]]:
    return [s.labels for fam in text_string_to_metric_families(body.decode())
            for s in fam.samples if s.name == metric]


def test_vanished_gpu_leaves_the_exposition() -> None:
    exposition = Exposition(process_metrics=False)
    exposition.update(Snapshot(samples=(gpu_up("0"), gpu_up("1"))))
    first = exposition.body
    assert sorted(lab["gpu"] for lab in names(first, "gpuwarden_gpu_up")) == ["0", "1"]
    exposition.update(Snapshot(samples=(gpu_up("0"),)))
    second = exposition.body
    assert [lab["gpu"] for lab in names(second, "gpuwarden_gpu_up")] == ["0"]
    assert exposition.body is second  # served from the cache


def test_snapshots_nobody_scrapes_are_never_rendered() -> None:
    """Cycles run every second, scrapes come every 15-60 s: render only what is read."""
    exposition = Exposition(process_metrics=False)
    for gpu in range(10):
        exposition.update(Snapshot(samples=(gpu_up(str(gpu)),)))
    assert exposition.renders_total == 0
    assert [lab["gpu"] for lab in names(exposition.body, "gpuwarden_gpu_up")] == ["9"]
    exposition.body  # noqa: B018 - a second scrape of the same snapshot
    assert exposition.renders_total == 1


def test_live_figures_show_once_refreshed_and_only_then() -> None:
    """A snapshot's live families are read as it is rendered; ``refresh`` (the store
    writer, after a pass) makes the next scrape render them again, alone, and only where
    a snapshot has any. The text is what one whole render gives."""
    written = [4.0]

    def live() -> tuple[SelfMetric, ...]:
        return (SelfMetric("samples_written", "counter", "Written", (({}, written[0]),)),)

    exposition = Exposition(process_metrics=False)
    exposition.refresh()  # nothing shown yet: nothing to do
    snapshot = Snapshot(samples=(gpu_up("0"),), self_metrics=(
        SelfMetric("cycles", "counter", "Cycles", (({}, 3.0),)),), info={"node": "n"},
        live=live)
    exposition.update(snapshot)
    assert b"\ngpuwarden_samples_written_total 4.0\n" in exposition.body
    written[0] = 8.0
    assert b"gpuwarden_samples_written_total 4.0" in exposition.body  # the cached text
    exposition.refresh()
    body = exposition.body
    assert b"\ngpuwarden_samples_written_total 8.0\n" in body
    assert body == Exposition(process_metrics=False).render(snapshot)
    assert exposition.renders_total == 1  # the samples were not rendered again

    exposition.update(Snapshot(samples=(gpu_up("0"),)))
    exposition.body  # noqa: B018
    exposition.refresh()  # no live families: the cached text stands
    assert exposition.body == Exposition(process_metrics=False).render(
        Snapshot(samples=(gpu_up("0"),)))
    assert exposition.renders_total == 2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_scrape_due_before_the_next_snapshot_finds_its_text_rendered() -> None:
    """A scraper every 15 s, cycles every second: from its third scrape on, the cycle
    before each renders the snapshot as it hands it over, and the scrape only reads."""
    clock = Clock()
    exposition = Exposition(process_metrics=False, clock=clock)
    on_demand = []
    for second in range(60):
        clock.now = 1000.0 + second
        exposition.update(Snapshot(samples=(gpu_up(str(second)),)), next_in=1.0)
        clock.now += 0.3  # the scrape, 0.3 s after the cycle
        if second % 15 == 0:
            rendered = exposition.renders_total
            body = exposition.scraped_by("10.0.0.7")
            on_demand.append(exposition.renders_total - rendered)
            assert [lab["gpu"] for lab in names(body, "gpuwarden_gpu_up")] == [str(second)]
    assert on_demand == [1, 1, 0, 0]  # 0, 15 (period learnt), 30 and 45 rendered ahead
    assert exposition.ahead_total == 2 and exposition.renders_total == 4


def test_a_wrong_forecast_costs_a_render_and_the_scrape_still_reads_the_latest() -> None:
    clock = Clock()
    exposition = Exposition(process_metrics=False, clock=clock)
    for at in (0.0, 15.0):
        clock.now = 1000.0 + at
        exposition.scraped_by("10.0.0.7")
    clock.now = 1029.5
    exposition.update(Snapshot(samples=(gpu_up("a"),)), next_in=1.0)
    assert exposition.ahead_total == 1
    # The scraper is late: the next snapshot is rendered ahead too (one cycle late at
    # most), then no more until it scrapes again.
    clock.now = 1030.5
    exposition.update(Snapshot(samples=(gpu_up("b"),)), next_in=1.0)
    clock.now = 1031.5
    exposition.update(Snapshot(samples=(gpu_up("c"),)), next_in=1.0)
    assert exposition.ahead_total == 2
    assert [lab["gpu"] for lab in names(exposition.scraped_by("10.0.0.7"), "gpuwarden_gpu_up")] \
        == ["c"]
    assert exposition.renders_total == 3


def test_failing_collector_is_counted_and_others_carry_on(tmp_path: Path) -> None:
    good = Scripted("good", [[gpu_up("0")]])
    bad = Scripted("bad", [CollectorError("driver said no"), RuntimeError("bug"), [gpu_up("9")]])
    daemon = Daemon(config(tmp_path), collectors=[good, bad])  # type: ignore[arg-type]
    daemon.start()
    try:
        port = daemon.http_port
        time.sleep(0.35)  # first cycles: bad raises a CollectorError, then a RuntimeError
        m = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for fam in text_string_to_metric_families(
                 requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text)
             for s in fam.samples}
        assert m[("gpuwarden_collector_success", (("collector", "good"),))] == 1.0
        assert m[("gpuwarden_collector_errors_total", (("collector", "bad"),))] >= 2
        assert m[("gpuwarden_cycle_errors_total", ())] == 0  # the cycle itself never failed
        assert daemon.cycles_total >= 3
        # ...and the bad one recovers once it returns samples again
        assert m[("gpuwarden_collector_success", (("collector", "bad"),))] == 1.0
    finally:
        daemon.shutdown()


def test_a_periodic_scraper_finds_the_text_rendered_before_it_asks(tmp_path: Path) -> None:
    """Over real HTTP: a scraper every second, cycles every 200 ms. Once its period is
    known, its scrapes read text rendered as the cycle before handed it over, and only
    the snapshots it reads are rendered, not one a cycle."""
    daemon = Daemon(config(tmp_path, "200ms"),
                    collectors=[Scripted("g", [[gpu_up("0")]])])  # type: ignore[arg-type]
    daemon.start()
    try:
        exposition = daemon.cycle.exposition
        session = requests.Session()
        url = f"http://127.0.0.1:{daemon.http_port}/metrics"
        on_demand, cycles_before = [], daemon.cycles_total
        for _ in range(8):
            time.sleep(1.0)
            rendered = exposition.renders_total
            assert "gpuwarden_gpu_up" in session.get(url, timeout=5).text
            on_demand.append(exposition.renders_total - rendered)
        cycles = daemon.cycles_total - cycles_before
    finally:
        daemon.shutdown()
    # The first two render on demand; a loaded machine may throw a later one off its
    # period (then it renders on demand too).
    assert on_demand[:2] == [1, 1] and sum(on_demand[2:]) <= 2, on_demand
    assert cycles >= 30 and exposition.renders_total <= 8 + exposition.ahead_total
    assert exposition.ahead_total <= 10, (exposition.ahead_total, cycles)


def test_healthz_turns_503_when_the_loop_stops(tmp_path: Path) -> None:
    daemon = Daemon(config(tmp_path), collectors=[Scripted("g", [[gpu_up("0")]])])  # type: ignore[arg-type]
    daemon.start()
    try:
        url = f"http://127.0.0.1:{daemon.http_port}"
        assert requests.get(f"{url}/healthz", timeout=2).status_code == 200
        daemon._scheduler.pause()  # the loop wedges
        time.sleep(2.3)  # > max(3 intervals of 100 ms, HEALTH_MIN_S)
        response = requests.get(f"{url}/healthz", timeout=2)
        assert response.status_code == 503
        assert response.json()["status"] == "unhealthy"
        assert requests.get(f"{url}/api/v1/alerts", timeout=2).json() == []
        assert requests.get(f"{url}/nope", timeout=2).status_code == 404
    finally:
        daemon.shutdown()


def test_quality_push_over_http(tmp_path: Path, monkeypatch: object) -> None:
    import os

    os.environ["GW_TEST_TOKEN"] = "s3cret"
    try:
        cfg = parse_config(f'node = "n"\ninterval = "100ms"\napi_token_env = "GW_TEST_TOKEN"\n'
                           f'listen = "127.0.0.1:{free_port()}"\n[storage]\n'
                           f'url = "sqlite:///{tmp_path / "gw.db"}"\n', "<test>")
        daemon = Daemon(cfg, collectors=[Scripted("g", [[gpu_up("0")]])])
        daemon.start()
        try:
            url = f"http://127.0.0.1:{daemon.http_port}/api/v1/quality"
            body = {"server": "vllm-0", "model": "llama-ckpt-7", "score": 0.91}
            assert requests.post(url, json=body, timeout=2).status_code == 401
            auth = {"Authorization": "Bearer s3cret"}
            bad = requests.post(url, json={"server": "vllm-0", "score": 3}, headers=auth,
                                timeout=2)
            assert bad.status_code == 400 and "error" in bad.json()
            big = requests.post(url, data=b"x" * (65 * 1024), headers=auth, timeout=2)
            assert big.status_code == 413
            ok = requests.post(url, json=body, headers=auth, timeout=2)
            assert ok.status_code == 202
            time.sleep(0.4)
            text = requests.get(f"http://127.0.0.1:{daemon.http_port}/metrics", timeout=2).text
            labels = names(text.encode(), "gpuwarden_quality_similarity")
            assert labels == [{"node": "n", "server": "vllm-0", "model": "llama-ckpt-7"}]
            stored = daemon.store.query("quality_similarity", None, 0, time.time() + 1)
            assert [list(s.values) for s in stored] == [[0.91]]
        finally:
            daemon.shutdown()
    finally:
        del os.environ["GW_TEST_TOKEN"]


def test_status_and_alerts_commands(tmp_path: Path, capsys: object) -> None:
    from gpuwarden.cli.main import main

    daemon = Daemon(config(tmp_path), collectors=[Scripted("g", [[gpu_up("0")]])])  # type: ignore[arg-type]
    daemon.start()
    try:
        url = f"http://127.0.0.1:{daemon.http_port}"
        assert main(["status", "--url", url]) == 0
        assert main(["alerts", "--url", url]) == 0
        out = capsys.readouterr().out  # type: ignore[attr-defined]
        assert ": ok (cycles " in out and "no pending or firing alerts" in out
    finally:
        daemon.shutdown()
    assert main(["status", "--url", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "not reachable" in capsys.readouterr().err  # type: ignore[attr-defined]
