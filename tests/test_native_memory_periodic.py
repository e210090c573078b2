"""PeriodicTrim: freed memory handed back after a cycle, at most once per period."""

from __future__ import annotations

import pytest

from gpuwarden import native_memory
from gpuwarden.native_memory import PeriodicTrim


class _FakeLibc:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(pad)
        return 1


def test_trims_at_most_once_per_period(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = _FakeLibc()
    monkeypatch.setattr(native_memory, "_libc", lambda: libc)
    trim = PeriodicTrim(10.0)
    assert trim.due(100.0)  # the first cycle's peak is handed back at once
    assert not trim.due(105.0)
    assert not trim.due(109.99)
    assert trim.due(110.0)
    assert not trim.due(119.0)
    assert libc.calls == [0, 0]
    assert trim.trims == 2


def test_without_glibc_it_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native_memory, "_libc", lambda: None)
    trim = PeriodicTrim(1.0)
    assert trim.due(5.0)
    assert not trim.due(5.5)


def test_the_real_trim_runs_on_this_platform() -> None:
    trim = PeriodicTrim(60.0)
    assert trim.due(0.0)
    assert not trim.due(1.0)
