"""Receiver outages against the dispatcher, judged as an on-call engineer would: how many
alerts never reached the receiver, how many it got twice, and whether what it believes
at the end (firing or resolved, per alert) is the truth.

The receiver is a real HTTP server on 127.0.0.1 (``tests/alerts/conftest.py``). The
10-second outage runs in real time; the 2- and 20-minute ones run on a fake clock whose
backoff waits move the clock instead of sleeping, so the real retry schedule is used.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, select

from gpuwarden.alerts.alert import Alert, AlertState
from gpuwarden.alerts.dispatch import Dispatcher
from gpuwarden.alerts.receivers.base import RetryPolicy
from gpuwarden.alerts.receivers.worker import NEVER_SEEN, RESOLVED_FIRST
from gpuwarden.alerts.state import AlertStateStore
from gpuwarden.cli.actions import add_commands as add_actions_commands
from gpuwarden.storage import Store, open_store, schema
from tests.alerts.conftest import (
    FakeTime,
    Harness,
    Recorder,
    Reply,
    action,
    dstore,
    firing,
    harness,
    make_alert,
    recorder,
    resolved,
)
from tests.faults.pgcluster import PgCluster

__all__ = ["dstore", "harness", "recorder"]  # fixtures shared with the delivery tests
T0 = 1_700_000_000.0


def view(rec: Recorder) -> tuple[dict[str, str], int]:
    """What the receiver believes per fingerprint (last accepted status), and how many
    notices it accepted twice (same alert, status and activation)."""
    state: dict[str, str] = {}
    seen: set[tuple[str, str, str]] = set()
    twice = 0
    for r in rec.delivered():
        body = r.json()
        for a in body["alerts"]:
            key = (a["fingerprint"], a["status"], a["startsAt"])
            twice += key in seen
            seen.add(key)
            state[a["fingerprint"]] = a["status"]
    return state, twice


def wait_until(cond: object, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if callable(cond) and cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def failures(d: Dispatcher) -> float:
    counts = {m.name: m for m in d.metrics()}["actions"].samples
    return sum(v for labels, v in counts if labels["result"] == "failed")


def replay(config: Path, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    add_actions_commands(parser.add_subparsers())
    args = parser.parse_args(["actions", "replay", "--config", str(config), *extra])
    return int(args.func(args))


def config_file(tmp_path: Path, store: Store, rec: Recorder, *names: str) -> Path:
    path = tmp_path / "gw.toml"
    text = f'node = "n1"\n[storage]\nurl = "{store.engine.url}"\n'
    for name in names:
        text += (f'[[actions]]\nname = "{name}"\ntype = "webhook"\n'
                 f'url = "{rec.url}/{name}"\n')
    path.write_text(text)
    return path


@pytest.mark.slow
def test_10s_outage_in_real_time_loses_nothing(harness: Harness, recorder: Recorder) -> None:
    """The SRE's case: a webhook refuses connections, then answers 503, for 10 s. The
    firing arrives once, soon after it is back, and the resolved after it."""
    d = harness(action(url=recorder.url), retry=RetryPolicy(rng=random.Random(11)))
    a = make_alert()
    recorder.down()
    started = time.monotonic()
    d.submit([firing(a)])
    time.sleep(5.0)
    recorder.up()
    recorder.default = Reply(503)
    time.sleep(max(0.0, started + 10.0 - time.monotonic()))
    recorder.default = Reply(200)
    back = time.monotonic()
    wait_until(lambda: len(recorder.delivered()) == 1, 25.0, "the firing after the outage")
    arrived = recorder.delivered()[0].at
    # The next try after a 10 s outage is the one due at ~15.5 s (12.4-18.6 s).
    assert arrived - back < 10.0
    d.submit([resolved(a)])
    wait_until(lambda: len(recorder.delivered()) == 2, 5.0, "the resolved notice")
    assert d.wait_idle(5)
    state, twice = view(recorder)
    assert state == {a.fingerprint: "resolved"} and twice == 0
    assert [r.json()["status"] for r in recorder.delivered()] == ["firing", "resolved"]
    assert d.audit is not None and d.audit.dead_letters() == []
    fails = harness.audit(result="failed")
    assert len(fails) >= 4  # refused, then 503: retried, not given up
    assert {r.http_status for r in fails} >= {None, 503}


def outage(rec: Recorder, clock: FakeTime, until: float) -> None:
    rec.clock = clock
    rec.respond = lambda path: Reply(503) if clock() < until else Reply(200)


def test_2min_outage_on_a_fake_clock(harness: Harness, recorder: Recorder) -> None:
    clock = FakeTime(T0)
    outage(recorder, clock, T0 + 120)
    d = harness(action(url=recorder.url), clock=clock, wait=clock.wait,
                retry=RetryPolicy(rng=random.Random(7)))
    a = make_alert(fired_at=T0)
    d.submit([firing(a)])
    wait_until(lambda: len(recorder.delivered()) == 1, 10.0, "the firing")
    assert d.wait_idle(5)
    (got,) = recorder.delivered()
    assert T0 + 120 <= got.at <= T0 + 180  # the first try after the outage: <= 60 s later
    tries = [r.at - T0 for r in recorder.requests]
    assert tries[:3] == pytest.approx([0.0, 0.5, 1.5], abs=0.5)
    assert len(tries) == len(set(tries))  # one request per attempt
    clock.advance(30)
    d.submit([resolved(a, T0 + 150)])
    wait_until(lambda: len(recorder.delivered()) == 2, 5.0, "the resolved")
    state, twice = view(recorder)
    assert state == {a.fingerprint: "resolved"} and twice == 0
    assert d.audit is not None and d.audit.dead_letters() == []


def test_20min_outage_dead_letters_at_the_window_and_replay_sends_no_stale_firing(
        harness: Harness, recorder: Recorder, dstore: Store, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Longer than the 15-minute window: dead letters at exactly +15 min. One alert
    resolves during the outage, one resolves while the daemon is not told (the alerts
    table says so), one still fires: replay sends only the one that still fires."""
    clock = FakeTime(T0)
    outage(recorder, clock, T0 + 1200)
    d = harness(action(url=recorder.url + "/hook"), clock=clock, wait=clock.wait,
                retry=RetryPolicy(rng=random.Random(3)))
    gone, quiet, still = (make_alert(server=s, fired_at=T0) for s in ("v0", "v1", "v2"))
    d.submit([firing(gone), firing(quiet), firing(still)])
    assert d.wait_idle(20)
    assert d.audit is not None
    letters = d.audit.dead_letters()
    assert len(letters) == 3 and recorder.delivered() == []
    per_alert = [r.at - T0 for r in recorder.requests
                 if r.json()["alerts"][0]["fingerprint"] == gone.fingerprint]
    assert per_alert[-1] == pytest.approx(900.0)  # the last try ends the window
    assert 22 <= len(per_alert) <= 24
    clock.advance(100)  # +1000 s, still down: the resolve is retried until it gets through
    d.submit([resolved(gone, T0 + 1000)])
    assert d.wait_idle(20)
    assert [r.json()["status"] for r in recorder.delivered()] == ["resolved"]
    assert T0 + 1200 <= recorder.delivered()[0].at <= T0 + 1260
    # quiet resolved too, but this action was never told (say the daemon was down then).
    done = Alert(name=quiet.name, labels=quiet.labels, annotations={},
                 state=AlertState.RESOLVED, value=0.0, active_at=quiet.active_at,
                 fired_at=quiet.fired_at, resolved_at=T0 + 1100)
    AlertStateStore(dstore.engine, "n1").save([done], [], T0 + 1100)

    assert replay(config_file(tmp_path, dstore, recorder, "hook"), "--all") == 0
    out = capsys.readouterr().out
    state, twice = view(recorder)
    assert state == {gone.fingerprint: "resolved", still.fingerprint: "firing"}, out
    assert twice == 0
    assert out.count("not sent, no longer current") == 2 and out.count("replayed to hook") == 1
    assert d.audit.dead_letters() == []  # all three settled
    superseded = harness.audit(result="superseded")
    assert {r.fingerprint for r in superseded} == {gone.fingerprint, quiet.fingerprint}


def test_resolved_supersedes_a_firing_in_backoff(harness: Harness,
                                                 recorder: Recorder) -> None:
    """The receiver answered 503 with Retry-After: 30. The resolve that follows must not
    wait those 30 s, and the firing must never be sent after it."""
    recorder.script.append(Reply(503, {"Retry-After": "30"}))
    d = harness(action(url=recorder.url), retry=RetryPolicy())
    a = make_alert()
    d.submit([firing(a)])
    wait_until(lambda: failures(d) >= 1, 5.0, "the first failed attempt")
    asked = time.monotonic()
    d.submit([resolved(a)])
    wait_until(lambda: len(recorder.delivered()) == 1, 5.0, "the resolved")
    assert recorder.delivered()[0].at - asked < 3.0
    assert d.wait_idle(3)  # nothing left in backoff
    time.sleep(0.3)
    assert [(r.json()["status"], r.status) for r in recorder.requests] == [
        ("firing", 503), ("resolved", 200)]
    assert view(recorder) == ({a.fingerprint: "resolved"}, 0)
    (row,) = harness.audit(result="superseded")
    assert row.detail["status"] == "firing" and row.reason == RESOLVED_FIRST


def test_resolved_for_a_firing_never_delivered_is_not_sent(harness: Harness,
                                                           recorder: Recorder) -> None:
    """Every attempt was refused (nothing reached the receiver): the resolve supersedes
    the firing and has nothing to resolve, so the receiver hears of neither."""
    recorder.down()
    d = harness(action(url=recorder.url), retry=RetryPolicy(base=5.0))
    a = make_alert()
    d.submit([firing(a)])
    wait_until(lambda: failures(d) >= 1, 5.0, "the refused attempt")
    d.submit([resolved(a)])
    assert d.wait_idle(3)  # not after the 4-6 s backoff
    recorder.up()
    time.sleep(0.5)
    assert recorder.requests == []
    assert sorted((r.detail["status"], r.reason) for r in harness.audit(result="superseded")) \
        == [("firing", RESOLVED_FIRST), ("resolved", NEVER_SEEN)]
    assert d.audit is not None and d.audit.dead_letters() == []


def test_a_new_firing_waits_for_the_resolve_before_it(harness: Harness,
                                                      recorder: Recorder) -> None:
    """Firing, resolved (refused for a while with Retry-After), firing again: the second
    firing must not overtake the resolve, or the receiver ends up believing 'resolved'."""
    d = harness(action(url=recorder.url), retry=RetryPolicy())
    first = make_alert(fired_at=T0)
    again = make_alert(fired_at=T0 + 300)
    d.submit([firing(first)])
    wait_until(lambda: len(recorder.delivered()) == 1, 5.0, "the first firing")
    recorder.script.append(Reply(503, {"Retry-After": "1"}))
    d.submit([resolved(first, T0 + 200)])
    wait_until(lambda: len(recorder.requests) == 2, 5.0, "the refused resolve")
    d.submit([firing(again)])
    wait_until(lambda: len(recorder.delivered()) == 3, 5.0, "resolve and second firing")
    assert [(r.json()["status"], r.json()["alerts"][0]["startsAt"][11:19])
            for r in recorder.delivered()] == [
        ("firing", "22:13:20"), ("resolved", "22:13:20"), ("firing", "22:18:20")]
    assert [r.json()["status"] for r in recorder.requests] == [
        "firing", "resolved", "resolved", "firing"]
    assert view(recorder) == ({first.fingerprint: "firing"}, 0)


def test_grouped_firing_in_backoff_loses_only_the_resolved_alert(
        harness: Harness, recorder: Recorder) -> None:
    """Two alerts in one grouped firing, in backoff; one resolves: its resolve goes out
    at once, the other alert's firing keeps its retries and arrives alone."""
    recorder.script.append(Reply(503, {"Retry-After": "2"}))
    d = harness(action(url=recorder.url, group_wait=0.1), retry=RetryPolicy())
    x, y = make_alert(server="vllm-0"), make_alert(server="vllm-1")
    d.submit([firing(x), firing(y)])
    wait_until(lambda: failures(d) >= 2, 5.0, "the grouped attempt")  # counted per alert
    d.submit([resolved(x)])
    wait_until(lambda: len(recorder.delivered()) == 2, 6.0, "resolve and remaining firing")
    first, second = recorder.delivered()
    assert [a["fingerprint"] for a in first.json()["alerts"]] == [x.fingerprint]
    assert first.json()["status"] == "resolved"
    assert [a["fingerprint"] for a in second.json()["alerts"]] == [y.fingerprint]
    assert second.at - first.at > 0.5  # the retry kept its Retry-After
    assert view(recorder) == ({x.fingerprint: "resolved", y.fingerprint: "firing"}, 0)


def test_retry_after_is_honoured_and_capped_on_the_schedule(harness: Harness,
                                                            recorder: Recorder) -> None:
    clock = FakeTime(T0)
    recorder.clock = clock
    recorder.script.extend([Reply(503, {"Retry-After": "120"}),
                            Reply(429, {"Retry-After": "86400"}), Reply(503)])
    d = harness(action(url=recorder.url), clock=clock, wait=clock.wait,
                retry=RetryPolicy(rng=random.Random(5)))
    d.submit([firing(make_alert(fired_at=T0))])
    wait_until(lambda: len(recorder.delivered()) == 1, 10.0, "the firing")
    at = [r.at - T0 for r in recorder.requests]
    assert at[:3] == pytest.approx([0.0, 120.0, 420.0])  # as asked; a day capped to 300 s
    assert 420.0 + 1.6 <= at[3] <= 420.0 + 2.4  # no Retry-After: the computed 2 s +-20 %
    assert view(recorder)[1] == 0


def test_410_endpoint_is_skipped_by_replay_all_unless_asked(
        harness: Harness, recorder: Recorder, dstore: Store, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    answers = {"/gone": Reply(410), "/flaky": Reply(500)}
    recorder.respond = lambda path: answers.get(path, Reply(200))
    d = harness(action("gone", url=recorder.url + "/gone"),
                action("flaky", url=recorder.url + "/flaky"))  # FAST: 3 tries, then dead
    d.submit([firing(make_alert(actions=("gone", "flaky")))])
    assert d.wait_idle(10) and d.is_disabled("gone")
    assert d.audit is not None and len(d.audit.dead_letters()) == 2
    answers.clear()  # both endpoints fixed
    config = config_file(tmp_path, dstore, recorder, "gone", "flaky")
    before = len(recorder.requests)
    assert replay(config, "--all") == 0
    out = capsys.readouterr().out
    assert "410 Gone" in out and "--include-disabled" in out
    assert [r.path for r in recorder.requests[before:]] == ["/flaky"]
    (left,) = d.audit.dead_letters()
    assert left.action == "gone"
    assert replay(config, "--all", "--include-disabled") == 0
    assert [r.path for r in recorder.requests[before:]] == ["/flaky", "/gone"]
    assert d.audit.dead_letters() == []


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: a frozen database."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield int(srv.getsockname()[1])
    stop.set()
    t.join(2)
    for c in conns:
        c.close()
    srv.close()


def test_delivery_goes_on_while_the_database_hangs(recorder: Recorder,
                                                   blackhole: int) -> None:
    """The audit trail's database accepts connections and never answers. Start-up,
    routing and sending go on; the audit rows wait in their bounded queue."""
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{blackhole}/test")
    session = requests.Session()
    d = Dispatcher([action(url=recorder.url)], engine=engine,
                   session=session, node="n1", retry=RetryPolicy(), poll=0.02,
                   restore_timeout=0.5)
    started = time.monotonic()
    d.start()
    try:
        assert time.monotonic() - started < 0.5  # start() does not read the trail
        d.submit([firing(make_alert(server=f"vllm-{i}")) for i in range(5)])
        recorder.wait(5, timeout=5)

        def gauge(name: str) -> float:
            return {m.name: m.samples[0][1] for m in d.metrics() if m.samples}[name]

        # The five "sent" rows wait in the queue (one in the hung transaction): none lost.
        wait_until(lambda: gauge("audit_queue_length") == 5, 3.0, "five queued rows")
        assert gauge("audit_rows_dropped") == 0
    finally:
        d.stop(1.0)
        session.close()
        engine.dispose()


def test_audit_rows_are_written_in_order_after_the_database_answers(
        harness: Harness, recorder: Recorder, dstore: Store, tmp_path: Path) -> None:
    """A SQLite store locked by another process' transaction: deliveries go on, and the
    rows made meanwhile are written, in order, once the lock is released."""
    import sqlite3

    d = harness(action(url=recorder.url))
    path = str(dstore.engine.url.database)
    blocker = sqlite3.connect(path, timeout=0.1, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        servers = [f"vllm-{i}" for i in range(8)]
        for s in servers:
            d.submit([firing(make_alert(server=s))])
        reqs = recorder.wait(8, timeout=5)  # sent while the store is locked
        assert d.audit is not None and d.audit.queued >= 1
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert d.wait_idle(40)  # every worker done and every audit row written
    with dstore.engine.connect() as conn:
        rows = conn.execute(select(schema.audit.c.result, schema.audit.c.target)
                            .order_by(schema.audit.c.id)).all()
    sent_order = [json.loads(r.body)["alerts"][0]["labels"]["server"] for r in reqs]
    assert [r.result for r in rows] == ["sent"] * 8
    assert [t.split('server="')[1].split('"')[0] for _, t in rows] == sent_order


@pytest.mark.postgres
def test_audit_survives_a_frozen_postgresql(pg: PgCluster, pg_url: str,
                                            recorder: Recorder) -> None:
    """The real thing: the store's PostgreSQL is SIGSTOPped while alerts go out."""
    store = open_store(pg_url, node="n1")
    h = Harness(store)
    try:
        d = h(action(url=recorder.url), retry=RetryPolicy())
        d.submit([firing(make_alert(server="before"))])
        assert d.wait_idle(10)
        pg.freeze()
        try:
            d.submit([firing(make_alert(server=f"frozen-{i}")) for i in range(3)])
            recorder.wait(4, timeout=5)  # sent while the database is frozen
            assert d.audit is not None
            wait_until(lambda: d.audit is not None and d.audit.queued == 3, 3.0,
                       "the three rows queued behind the frozen database")
        finally:
            pg.thaw()
        assert d.wait_idle(40)
        rows = h.audit()
        assert [r.result for r in rows] == ["sent"] * 4
    finally:
        h.close()
        store.close()
