"""What the demo prints as alerts change (tools/demo_report.py), from the engine's own
alerts and events: pending from the published list, firing and resolved from the events,
a pending alert whose condition cleared, and the closing summary."""

from __future__ import annotations

import io

from gpuwarden.alerts.alert import Alert, AlertEvent, AlertState, EventKind, rfc3339
from gpuwarden.detectors.defaults import DEFAULT_RULES
from gpuwarden.model import make_labels
from gpuwarden.tools.demo_report import DemoReport, base_url

T0 = 1_700_000_000.0


def _alert(name: str, state: AlertState, value: float, *, at: float, **labels: str) -> Alert:
    return Alert(name=name, labels=make_labels({"alertname": name, **labels}, node="n1"),
                 annotations={}, state=state, value=value, active_at=at,
                 fired_at=at + 30 if state is not AlertState.PENDING else None)


def _report() -> tuple[DemoReport, io.StringIO]:
    out = io.StringIO()
    return DemoReport(out, DEFAULT_RULES, T0), out


def test_pending_firing_resolved_with_times_and_units() -> None:
    report, out = _report()
    pending = _alert("KVCacheNearFull", AlertState.PENDING, 0.934, at=T0 + 52, server="vllm-0")
    report.poll([pending.to_api()], T0 + 53)
    report.poll([pending.to_api()], T0 + 54)  # still pending: printed once
    firing = _alert("KVCacheNearFull", AlertState.FIRING, 0.97, at=T0 + 52, server="vllm-0")
    report.on_events([AlertEvent(EventKind.FIRING, firing, T0 + 82)])
    report.poll([firing.to_api()], T0 + 83)  # firing: nothing more from the list
    firing.value = 0.87
    report.on_events([AlertEvent(EventKind.RESOLVED, firing, T0 + 150)])
    report.poll([], T0 + 151)  # gone after firing: not "cleared"
    report.summary(160.0)
    assert out.getvalue().splitlines() == [
        "t+ 52 s  PENDING   KVCacheNearFull        vllm-0     KV cache usage 93.4 % (> 90 %), "
        "fires after 30s of it",
        "t+ 82 s  FIRING    KVCacheNearFull        vllm-0     KV cache usage 97 % (> 90 %)",
        "t+150 s  RESOLVED  KVCacheNearFull        vllm-0     after 1m8s firing "
        "(last: KV cache usage 87 %)",
        "",
        "demo over at t+160 s: 1 alert(s) fired: KVCacheNearFull (vllm-0)",
    ]


def test_a_pending_alert_whose_condition_cleared() -> None:
    report, out = _report()
    pending = _alert("TTFTP95High", AlertState.PENDING, 2.4, at=T0 + 61, server="vllm-0")
    report.poll([pending.to_api()], T0 + 61)
    report.poll([], T0 + 75)
    report.summary(80.0)
    lines = out.getvalue().splitlines()
    assert lines[0] == ("t+ 61 s  PENDING   TTFTP95High            vllm-0     TTFT p95 2.4 s "
                        "(> 2 s), fires after 1m of it")
    assert lines[1].startswith("t+ 75 s  CLEARED   TTFTP95High ")
    assert lines[-1] == "demo over at t+80 s: no alert fired (run longer: the first fires " \
                        "about 20 s in)"


def test_an_alert_of_an_unknown_rule_and_one_still_firing() -> None:
    report, out = _report()
    firing = _alert("MyRule", AlertState.FIRING, 6.99, at=T0 + 5, gpu="3")
    report.on_events([AlertEvent(EventKind.FIRING, firing, T0 + 35)])
    report.summary(40.0)
    lines = out.getvalue().splitlines()
    assert lines[0] == "t+ 35 s  FIRING    MyRule                 gpu 3      value 6.99"
    assert lines[-1].endswith("still firing at the end: MyRule (gpu 3)")


def test_a_malformed_published_alert_is_skipped() -> None:
    report, out = _report()
    report.poll([{"name": "X", "state": "pending"}, {"fingerprint": 3}], T0)
    assert out.getvalue() == ""


def test_urls_for_a_listen_address() -> None:
    assert base_url("127.0.0.1", 9842) == "http://127.0.0.1:9842"
    assert base_url("0.0.0.0", 9842) == "http://127.0.0.1:9842"
    assert base_url("::", 9842) == "http://[::1]:9842"
    assert base_url("::1", 80) == "http://[::1]:80"
    assert rfc3339(T0).endswith("Z")
