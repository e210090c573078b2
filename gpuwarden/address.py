"""The daemon's HTTP address: its default, and ``host:port`` parsing shared by the config,
the CLI (which talks to a running daemon) and alert links (which point at it)."""

from __future__ import annotations

import re

DEFAULT_LISTEN = "127.0.0.1:9842"
DEFAULT_URL = f"http://{DEFAULT_LISTEN}"


def split_host_port(text: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[::1]:port``; raise ValueError naming what is wrong."""
    m = re.match(
        r"^\[(?P<h6>[^\]]+)\]:(?P<p6>\d{1,5})$|^(?P<h>[^:\[\]]+):(?P<p>\d{1,5})$", text
    )
    if not m:
        shown = repr(text) if len(text) <= 38 else repr(text[:38]) + "..."
        raise ValueError(f"expected HOST:PORT (or [IPv6]:PORT), got {shown}")
    host = m["h6"] or m["h"]
    port = int(m["p6"] or m["p"])
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    return host, port
