"""Reading an untrusted HTTP body with a size cap, a deadline and bounded memory.

Shared by the collectors that scrape ``/metrics`` over HTTP (inference servers,
dcgm-exporter): ``requests``' timeout bounds each socket operation, not the transfer,
and a misbehaving exporter can send an endless or a huge body.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gpuwarden.errors import ScrapeFailure
from gpuwarden.native_memory import release_freed_memory

if TYPE_CHECKING:
    import requests
    import urllib3

# The body size cap. Real vLLM scrapes are 50-300 KB, one serving many LoRA adapters
# ~1-2 MB, a dcgm-exporter of 8 GPUs ~100 KB; 8 MiB leaves 4x headroom over that while
# halving the transient memory a runaway body can cost (the body and its join, then
# the decoded text, per scrape running in parallel) compared with the 16 MiB used before.
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
_CHUNK = 64 * 1024


def read_body(resp: requests.Response, limit: int, timeout: float) -> bytes:
    """The decoded body of a ``requests`` response: :func:`read_raw_body` of its
    urllib3 response."""
    return read_raw_body(resp.raw, limit, timeout)


def read_raw_body(raw: urllib3.BaseHTTPResponse, limit: int, timeout: float) -> bytes:
    """The decoded body, at most ``limit`` bytes, read within ``timeout`` seconds.

    Each read asks for no more than may still be accepted plus one byte, so a body over
    the limit is detected having buffered at most ``limit + 1`` bytes, also when it is
    gzip-encoded (urllib3 2 decodes at most the bytes asked for) or arrives in many
    small pieces. Pieces of at most 64 KiB are joined at the end (peak: twice the body,
    so twice ``limit``): measured, a growing bytearray peaks as high, and what it leaves
    in glibc's arenas is not returned even by ``malloc_trim``, while separate pieces are
    (``native_memory.release_freed_memory``, called here for a body refused as too big
    and by the collectors once a body is parsed).

    ``requests``' ``iter_content`` (``raw.stream``) fills each chunk before yielding
    it, so a server dribbling bytes slower than the body deadline but faster than the
    read timeout would never be cut off; urllib3 2's ``read1`` returns what one socket
    read brought. urllib3 1.26 has no ``read1`` (requests still allows it): fall back
    to ``stream`` there.
    """
    deadline = time.monotonic() + timeout
    read1 = getattr(raw, "read1", None)
    pieces = raw.stream(_CHUNK, decode_content=True)  # lazy: only iterated without read1
    chunks: list[bytes] = []
    size = 0
    while True:
        if read1 is not None:
            chunk = bytes(read1(min(_CHUNK, limit - size + 1), decode_content=True))
        else:
            chunk = next(pieces, b"")
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            chunks.clear()  # before the exception keeps this frame alive
            release_freed_memory(size)
            raise ScrapeFailure("oversize", f"body over {limit} bytes")
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise ScrapeFailure("timeout", f"body not read within {timeout}s")
