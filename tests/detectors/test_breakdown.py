"""Latency breakdown: which request phase grew when a TTFT, ITL or e2e rule fires."""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

import numpy as np
import pytest

from gpuwarden.detectors import Finding, build_detector
from gpuwarden.detectors.breakdown import READ_SPAN, PhaseChange, describe
from gpuwarden.detectors.defaults import DEFAULT_RULES
from gpuwarden.model import Labels, SeriesData

from .helpers import NOW, SRV, SRV2, detect, histogram, rule, series

WINDOW = 60.0
TTFT = rule("TTFTP95High", signal="ttft_p95_seconds", threshold=2.0, window=WINDOW)
ITL = rule("TokenLatencyP95High", signal="itl_p95_seconds", threshold=0.13, window=WINDOW)
E2E = rule("E2EP95High", signal="e2e_latency_p95_seconds", threshold=10.0, window=WINDOW)


def slow(signal: str, labels: Labels = SRV) -> list[SeriesData]:
    """A latency histogram whose p95 lies in (20, 40] s: beyond every threshold above."""
    return histogram(signal, labels, (0.1, 20.0, 40.0), lambda t: (0.0, 0.0, 5 * (t + 900), 0.0),
                     start=NOW - 900)


def phase(name: str, before: float | None, now: float, labels: Labels = SRV,
          rps: float = 2.0) -> list[SeriesData]:
    """``<name>_time_seconds_sum``/``_count``: ``rps`` finished requests a second with a
    mean of ``before`` seconds (None: no request at all) until the rule's window, then
    ``now``."""
    ts = np.arange(NOW - 900, NOW + 0.5, 1.0)
    in_window = ts > NOW - WINDOW
    per_second = np.where(in_window, rps, 0.0 if before is None else rps)
    mean = np.where(in_window, now, before or 0.0)
    count = np.cumsum(per_second)
    total = np.cumsum(per_second * mean)
    return [series(f"{name}_time_seconds_sum", labels, ts, total),
            series(f"{name}_time_seconds_count", labels, ts, count)]


def notes(found: Finding) -> dict[str, str]:
    return dict(found.annotations)


def test_queue_driven_ttft_names_queue() -> None:
    (found,) = detect(TTFT, *slow("ttft_seconds"), *phase("queue", 0.08, 1.91),
                      *phase("prefill", 0.21, 0.24), *phase("decode", 3.0, 3.02))
    text = notes(found)["breakdown"]
    assert text.startswith("queue grew most: mean 0.08 s -> 1.91 s (+1.83 s, x23.9) "
                           "against the 9 min before")
    assert "prefill 0.21 s -> 0.24 s" in text
    assert "decode unchanged at 3.02 s (not part of TTFT)" in text
    assert notes(found)["description"].endswith("; queue grew most: mean 0.08 s -> 1.91 s "
                                                "(+1.83 s, x23.9)")


def test_prefill_driven_ttft_names_prefill() -> None:
    (found,) = detect(TTFT, *slow("ttft_seconds"), *phase("queue", 0.05, 0.07),
                      *phase("prefill", 0.2, 1.6), *phase("decode", 3.0, 3.0))
    text = notes(found)["breakdown"]
    assert text.startswith("prefill grew most: mean 0.2 s -> 1.60 s (+1.40 s, x8)")
    assert "queue 0.05 s -> 0.07 s" in text  # grew too, by less


def test_decode_growth_is_not_named_for_ttft() -> None:
    (found,) = detect(TTFT, *slow("ttft_seconds"), *phase("queue", 0.05, 0.05),
                      *phase("prefill", 0.2, 0.2), *phase("decode", 3.0, 9.0))
    text = notes(found)["breakdown"]
    assert text.startswith("no phase of TTFT grew (queue, prefill) against the 9 min before")
    assert "decode 3.00 s -> 9.00 s (not part of TTFT)" in text


def test_itl_regression_names_decode_and_says_queue_grew() -> None:
    (found,) = detect(ITL, *slow("itl_seconds"), *phase("queue", 0.05, 1.2),
                      *phase("prefill", 0.2, 0.2), *phase("decode", 4.0, 9.0))
    text = notes(found)["breakdown"]
    assert text.startswith("decode grew: mean 4.00 s -> 9.00 s (+5.00 s, x2.25)")
    assert "queue also grew: 0.05 s -> 1.20 s (a queue that grows usually comes with a " \
           "larger batch" in text
    assert "prefill unchanged at 0.2 s (not part of ITL)" in text


def test_itl_regression_at_the_same_load() -> None:
    (found,) = detect(ITL, *slow("itl_seconds"), *phase("queue", 0.05, 0.05),
                      *phase("decode", 4.0, 9.0))
    text = notes(found)["breakdown"]
    assert text.startswith("decode grew")
    assert "queue unchanged at 0.05 s: not a load increase" in text


def test_e2e_names_the_largest_growth_in_seconds() -> None:
    # decode grows by 50 % (+2 s), queue by x10 (+0.9 s): seconds decide, not ratios
    (found,) = detect(E2E, *slow("e2e_latency_seconds"), *phase("queue", 0.1, 1.0),
                      *phase("prefill", 0.2, 0.2), *phase("decode", 4.0, 6.0))
    assert notes(found)["breakdown"].startswith("decode grew most: mean 4.00 s -> 6.00 s")


def test_no_phase_histograms_no_breakdown_and_no_error() -> None:
    (plain,) = detect(TTFT, *slow("ttft_seconds"))
    assert "breakdown" not in notes(plain)
    assert "grew" not in notes(plain)["description"]
    # another server's phases are not this one's
    (found,) = detect(TTFT, *slow("ttft_seconds"), *phase("queue", 0.05, 2.0, SRV2))
    assert found.labels == SRV and "breakdown" not in notes(found)


def test_queue_only_server_says_what_it_lacks() -> None:
    # SGLang and TGI export the queue histogram only
    (found,) = detect(TTFT, *slow("ttft_seconds"), *phase("queue", 0.05, 2.0))
    text = notes(found)["breakdown"]
    assert text.startswith("queue grew: mean 0.05 s -> 2.00 s")  # not "most": alone
    assert text.endswith("; prefill not exported by this server")


def test_idle_baseline_says_there_is_none() -> None:
    (found,) = detect(TTFT, *slow("ttft_seconds"), *phase("queue", None, 1.5),
                      *phase("prefill", None, 0.3), *phase("decode", None, 2.0))
    text = notes(found)["breakdown"]
    assert text == ("no baseline: no request finished in the 9 min before the rule's window; "
                    "means now: queue 1.50 s, prefill 0.3 s, decode 2.00 s")


def test_no_request_finished_in_the_window() -> None:
    found = [PhaseChange("queue", 0.1, None), PhaseChange("prefill", 0.2, None)]
    told = describe("ttft_seconds", found, WINDOW)
    assert told is not None
    assert told.text == "breakdown unavailable: no request finished in the last 1 min"


def test_only_rising_latency_rules_read_and_get_a_breakdown() -> None:
    low = rule(signal="ttft_p50_seconds", op="<", threshold=100.0, window=WINDOW)
    assert build_detector(low).inputs == {"ttft_seconds_bucket": WINDOW}
    (found,) = detect(low, *slow("ttft_seconds"), *phase("queue", 0.05, 2.0))
    assert "breakdown" not in notes(found)
    phases = rule(signal="prefill_time_p95_seconds", threshold=0.8, window=WINDOW)
    assert build_detector(phases).inputs == {"prefill_time_seconds_bucket": WINDOW}


def test_latency_rules_read_no_further_back_than_the_store_keeps_in_memory() -> None:
    from gpuwarden.storage.store import Store

    memory = inspect.signature(Store).parameters["memory_window"].default
    assert memory >= READ_SPAN
    for name in ("TTFTP95High", "TokenLatencyP95High"):
        (default,) = (r for r in DEFAULT_RULES if r.name == name)
        inputs = build_detector(default).inputs
        assert inputs["queue_time_seconds_count"] == READ_SPAN
        assert max(inputs.values()) <= memory


@pytest.mark.parametrize("window", [60.0, 300.0, 600.0])
def test_baseline_is_never_shorter_than_the_window(window: float) -> None:
    r = rule(signal="ttft_p95_seconds", threshold=2.0, window=window)
    reach = build_detector(r).inputs["decode_time_seconds_sum"]
    assert reach == max(READ_SPAN, 2 * window)


def test_queue_regression_through_the_rule_engine(tmp_path: Any) -> None:
    """A vLLM-like trace through a real store and the default rules: TTFT regresses at
    t=660 because requests queue (prefill and decode as before); the TTFTP95High alert's
    annotations name the queue when it fires."""
    from gpuwarden.storage import open_store
    from tests.incidents.corpus import REQUEST_BUCKETS, T0, Spec, Trace, background
    from tests.incidents.harness import replay_live

    srv = {"server": "vllm-0", "model": "meta-llama/Llama-3.1-8B-Instruct"}
    specs = background(1, ["vllm-0"])
    for s in specs:
        if s.signal == "ttft_seconds":
            s.segments = [(0.0, {"median": 0.25, "sigma": 0.5}), (660.0, {"median": 2.2})]

    def request_phase(name: str, before: float, after: float) -> Spec:
        return Spec(f"{name}_time_seconds", srv, "histogram",
                    [(0.0, {"rps": 8.0, "median": before, "sigma": 0.3}),
                     (660.0, {"median": after})], buckets=REQUEST_BUCKETS)

    specs += [request_phase("queue", 0.05, 1.9), request_phase("prefill", 0.2, 0.2),
              request_phase("decode", 4.0, 4.0)]
    trace = Trace("queue-regression", "", 800, "gpu-node-01", 11, specs)
    with open_store(f"sqlite:///{tmp_path / 's.db'}", node=trace.node) as store:
        got, _ = replay_live(trace, store, DEFAULT_RULES, None)
    firing = [e for e in got.events if e.alert.name == "TTFTP95High"]
    assert firing, "TTFTP95High did not fire"
    annotations, at = firing[0].alert.annotations, firing[0].at - T0
    # The truth: lognormal means (median x exp(sigma^2 / 2)); the baseline, the 9 min
    # before the 60 s window, holds the regression's first seconds when the alert fires.
    before, after = (m * math.exp(0.3**2 / 2) for m in (0.05, 1.9))
    share = max(0.0, at - 60 - 660) / 540
    m = re.match(r"queue grew most: mean ([\d.]+) s -> ([\d.]+) s \(\+[\d.]+ s, x[\d.]+\) "
                 r"against the 9 min before; prefill unchanged at 0.21 s; decode unchanged",
                 annotations["breakdown"])
    assert m, annotations["breakdown"]
    assert float(m[1]) == pytest.approx(before * (1 - share) + after * share, rel=0.1)
    assert float(m[2]) == pytest.approx(after, rel=0.05)
    assert "queue grew most" in annotations["description"]
