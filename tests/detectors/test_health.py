"""Health rules: GPULost, ServerDown (threshold) and XIDError (increase with resets)."""

from __future__ import annotations

import pytest

from gpuwarden.detectors.defaults import DEFAULT_RULES
from gpuwarden.model import make_labels

from .helpers import NOW, const, detect, gpu, series

RULES = {r.name: r for r in DEFAULT_RULES}
XID = "gpu_xid_errors_total"


def xid(values: list[float], step: float = 20.0):
    ts = [NOW - step * (len(values) - 1 - i) for i in range(len(values))]
    return series(XID, gpu(0), ts, values)


def test_xid_new_error_fires_for_one_window() -> None:
    (found,) = detect(RULES["XIDError"], xid([0] * 10 + [1] * 6))  # error 100 s ago
    assert found.labels == gpu(0)
    assert found.value == pytest.approx(1.0, rel=0.1)
    assert not detect(RULES["XIDError"], xid([1] * 16))  # an old error, nothing new
    assert not detect(RULES["XIDError"], xid([3] * 2 + [4] + [4] * 16))  # 340 s ago: outside


def test_xid_counter_reset() -> None:
    # daemon restart: the count restarts at 0 with no new error -> nothing
    assert not detect(RULES["XIDError"], xid([5] * 8 + [0] * 8))
    # restart, then a new error: found, although the counter is lower than before
    (found,) = detect(RULES["XIDError"], xid([5] * 8 + [0] * 4 + [1] * 4))
    assert found.value > 0


def test_gpu_lost() -> None:
    found = detect(RULES["GPULost"], const("gpu_up", gpu(0), 1.0), const("gpu_up", gpu(1), 0.0))
    assert [f.labels for f in found] == [gpu(1)]


def test_server_down() -> None:
    labels = make_labels(node="n1", server="vllm-0", kind="vllm")
    assert detect(RULES["ServerDown"], const("server_up", labels, 0.0))[0].labels == labels
    assert not detect(RULES["ServerDown"], const("server_up", labels, 1.0))
    assert RULES["ServerDown"].for_ == 30.0
