"""The collector runner: each collector timed and counted, a hung one never waited for."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

import pytest

from gpuwarden.collector.base import Collector
from gpuwarden.collector.run import CollectorRunner
from gpuwarden.errors import CollectorError
from gpuwarden.model import Sample, SelfMetric, make_labels


def up(name: str) -> Sample:
    return Sample("gpu_up", make_labels(node="n", gpu=name), 1.0, time.time())


class Fixed(Collector):
    def __init__(self, name: str, outcome: list[Sample] | Exception,
                 reported: str | None = None) -> None:
        self.name, self.outcome, self.last_error = name, outcome, reported
        self.closed = False

    def collect(self) -> Iterable[Sample]:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome

    def close(self) -> None:
        self.closed = True


class Hung(Collector):
    """Blocks until released; counts how often it was started."""

    name = "hung"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.starts = 0

    def collect(self) -> Iterable[Sample]:
        self.starts += 1
        self.release.wait(10)
        return [up("late")]


class Scraper(Fixed):
    """A collector that keeps the scrape counters, as the scrape collector does."""

    def __init__(self, name: str) -> None:
        super().__init__(name, [])
        self.scrape_errors_total = {"timeout": 2, "refused": 1}
        self.parse_errors_total = 3


def family(metrics: tuple[SelfMetric, ...], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    for metric in metrics:
        if metric.name == name:
            return {tuple(sorted(labels.items())): value for labels, value in metric.samples}
    raise AssertionError(f"{name} not reported")


@pytest.fixture
def runners() -> Iterator[list[CollectorRunner]]:
    made: list[CollectorRunner] = []
    yield made
    for runner in made:
        runner.close()


def test_each_collector_is_timed_and_counted(runners: list[CollectorRunner]) -> None:
    runner = CollectorRunner([Fixed("good", [up("0")]), Fixed("bad", CollectorError("no")),
                              Fixed("buggy", RuntimeError("bug")),
                              Fixed("quiet", [up("1")], reported="refused: down")])
    runners.append(runner)
    samples = runner.run(1.0)
    assert sorted(s.labels for s in samples) == sorted([up("0").labels, up("1").labels])
    metrics = runner.metrics()
    success = family(metrics, "collector_success")
    assert success == {(("collector", "bad"),): 0.0, (("collector", "buggy"),): 0.0,
                       (("collector", "good"),): 1.0, (("collector", "quiet"),): 0.0}
    errors = family(metrics, "collector_errors")
    assert errors[(("collector", "bad"),)] == 1 and errors[(("collector", "quiet"),)] == 1
    assert errors[(("collector", "good"),)] == 0  # exported from the start, at 0
    assert all(v >= 0 for v in family(metrics, "collector_duration_seconds").values())


def test_a_hung_collector_is_not_waited_for_nor_started_again(
        runners: list[CollectorRunner]) -> None:
    hung = Hung()
    runner = CollectorRunner([hung, Fixed("good", [up("0")])])
    runners.append(runner)
    for _ in range(3):
        started = time.monotonic()
        assert [s.labels for s in runner.run(0.05)] == [up("0").labels]
        assert time.monotonic() - started < 1.0
    assert hung.starts == 1
    assert family(runner.metrics(), "collector_errors")[(("collector", "hung"),)] == 3
    hung.release.set()
    time.sleep(0.1)
    assert up("late").labels in [s.labels for s in runner.run(1.0)]
    assert family(runner.metrics(), "collector_success")[(("collector", "hung"),)] == 1.0


def test_scrape_counters_of_the_collectors_that_keep_them(
        runners: list[CollectorRunner]) -> None:
    runner = CollectorRunner([Scraper("server:a"), Fixed("sim", [])])
    runners.append(runner)
    metrics = runner.metrics()
    assert family(metrics, "scrape_errors") == {
        (("collector", "server:a"), ("reason", "refused")): 1.0,
        (("collector", "server:a"), ("reason", "timeout")): 2.0}
    assert family(metrics, "scrape_invalid_lines") == {(("collector", "server:a"),): 3.0}


def test_replace_hands_back_the_old_collectors(runners: list[CollectorRunner]) -> None:
    old = Fixed("old", [up("0")])
    runner = CollectorRunner([old])
    runners.append(runner)
    runner.run(1.0)
    new = Fixed("new", [up("1")])
    assert runner.replace([new]) == (old,)
    assert [s.labels for s in runner.run(1.0)] == [up("1").labels]
    runner.close()
    assert new.closed and not old.closed
