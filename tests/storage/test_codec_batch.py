"""``decode_chunks`` (many chunks at once, as queries read them) equals ``decode_chunk``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuwarden.errors import CodecError
from gpuwarden.storage import codec

chunk_st = st.tuples(
    st.integers(0, 40),  # samples
    st.sampled_from(["decimal", "noise", "specials", "counter"]),
    st.integers(0, 2**31),  # seed
)


def _chunk(n: int, kind: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    ts = 1_700_000_000_000 + np.cumsum(rng.integers(990, 1010, n)).astype(np.int64)
    if kind == "decimal":
        vals = np.round(rng.uniform(0, 1, n), int(rng.integers(0, 4)))
    elif kind == "noise":
        vals = rng.standard_normal(n) * 1e6
    elif kind == "specials":
        vals = rng.choice([0.0, -0.0, np.nan, np.inf, -np.inf, 5e-324, 1.5], n)
    else:
        vals = np.cumsum(rng.integers(0, 1000, n)).astype(np.float64)
    return codec.encode_chunk(ts, vals)


@settings(max_examples=100, deadline=None)
@given(st.lists(chunk_st, max_size=30))
def test_batch_decode_is_bit_identical_in_input_order(
    specs: list[tuple[int, str, int]],
) -> None:
    blobs = [_chunk(*spec) for spec in specs]
    got = codec.decode_chunks(blobs)
    assert len(got) == len(blobs)
    for blob, (ts, vals) in zip(blobs, got, strict=True):
        want_ts, want_vals = codec.decode_chunk(blob)
        assert ts.tolist() == want_ts.tolist()
        assert vals.view(np.uint64).tolist() == want_vals.view(np.uint64).tolist()


def test_one_bad_chunk_in_a_batch_is_a_codec_error() -> None:
    good = _chunk(10, "decimal", 1)
    for bad in (b"", good[:-3], b"\x09" + good[1:]):
        with pytest.raises(CodecError):
            codec.decode_chunks([good, bad, good])
