"""The chunk and head-log encodings round-trip bit-exactly and compress real data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuwarden.errors import CodecError
from gpuwarden.storage import codec

finite_or_not = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
specials = st.sampled_from([0.0, -0.0, np.nan, np.inf, -np.inf, 5e-324, 1.7976931348623157e308])
values_st = st.lists(st.one_of(finite_or_not, specials), min_size=1, max_size=150)
decimal_st = st.lists(
    st.tuples(st.integers(-(10**12), 10**12), st.integers(0, 6)), min_size=1, max_size=150
)


def _ts(start: int, gaps: list[int]) -> np.ndarray:
    return np.cumsum(np.array([start, *gaps], dtype=np.int64))


def _bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).view(np.uint64)


@settings(max_examples=200, deadline=None)
@given(values=values_st, start=st.integers(-(2**50), 2**50), data=st.data())
def test_chunk_roundtrip_any_floats_any_increasing_timestamps(
    values: list[float], start: int, data: st.DataObject
) -> None:
    vals = np.array(values, dtype=np.float64)
    n = len(values) - 1
    ts = _ts(start, data.draw(st.lists(st.integers(1, 2**40), min_size=n, max_size=n)))
    got_ts, got_vals = codec.decode_chunk(codec.encode_chunk(ts, vals))
    np.testing.assert_array_equal(got_ts, ts)
    np.testing.assert_array_equal(_bits(got_vals), _bits(vals))  # NaN payloads, -0.0 too


@settings(max_examples=150, deadline=None)
@given(pairs=decimal_st, data=st.data())
def test_chunk_roundtrip_decimal_values(pairs: list[tuple[int, int]], data: st.DataObject) -> None:
    vals = np.array([k / 10**s for k, s in pairs], dtype=np.float64)
    n = len(pairs) - 1
    ts = _ts(1_700_000_000_000, data.draw(st.lists(st.integers(990, 1010), min_size=n, max_size=n)))
    got_ts, got_vals = codec.decode_chunk(codec.encode_chunk(ts, vals))
    np.testing.assert_array_equal(got_ts, ts)
    np.testing.assert_array_equal(_bits(got_vals), _bits(vals))


@settings(max_examples=150, deadline=None)
@given(
    ids=st.lists(st.integers(0, 2**40), min_size=0, max_size=100),
    data=st.data(),
)
def test_head_log_cycle_roundtrip(ids: list[int], data: st.DataObject) -> None:
    n = len(ids)
    vals = np.array(data.draw(st.lists(finite_or_not, min_size=n, max_size=n)), dtype=np.float64)
    ts = np.array(
        data.draw(st.lists(st.integers(0, 2**45), min_size=n, max_size=n)), dtype=np.int64
    )
    got = codec.decode_cycle(codec.encode_cycle(np.array(ids, dtype=np.int64), ts, vals))
    np.testing.assert_array_equal(got[0], ids)
    np.testing.assert_array_equal(got[1], ts)
    np.testing.assert_array_equal(_bits(got[2]), _bits(vals))


def test_empty_chunk_roundtrip() -> None:
    ts, vals = codec.decode_chunk(codec.encode_chunk(np.empty(0, np.int64), np.empty(0)))
    assert ts.size == 0 and vals.size == 0


def test_nvml_like_gauges_compress_to_about_a_byte_per_sample() -> None:
    rng = np.random.default_rng(7)
    n = 240
    ts = 1_700_000_000_000 + np.arange(n, dtype=np.int64) * 1000 + rng.integers(0, 3, n)
    util = np.clip(50 + np.cumsum(rng.integers(-2, 3, n)), 0, 100) / 100
    mem = (40_000 + np.cumsum(rng.integers(-1, 2, n))) * 1048576.0
    temp = np.full(n, 64.0)
    for vals in (util, mem, temp):
        blob = codec.encode_chunk(ts, vals)
        assert len(blob) / n < 1.6, len(blob)
        np.testing.assert_array_equal(codec.decode_chunk(blob)[1], vals)
    noise = rng.standard_normal(n)  # incompressible: must still round-trip, ~8 B/sample
    np.testing.assert_array_equal(codec.decode_chunk(codec.encode_chunk(ts, noise))[1], noise)


@pytest.mark.parametrize("blob", [b"", b"\x01", b"\x09" + b"\x00" * 30])
def test_garbage_is_a_codec_error(blob: bytes) -> None:
    with pytest.raises(CodecError):
        codec.decode_chunk(blob)
    with pytest.raises(CodecError):
        codec.decode_cycle(blob)


def test_truncated_chunk_is_a_codec_error() -> None:
    blob = codec.encode_chunk(np.arange(10, dtype=np.int64), np.arange(10.0))
    with pytest.raises(CodecError):
        codec.decode_chunk(blob[:-3])
