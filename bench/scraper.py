"""A scraper of its own, timing each GET of a URL: ``python -m bench.scraper URL ...``.

The daemon benchmark times its GETs of ``/metrics`` here, in a process of its own
with the standard library's client, because that is how Prometheus reads the daemon:
from another process, with a client that costs little CPU. Timed with ``requests``
from the benchmark's process, a GET also carried that client's ~1.5 ms of CPU
(``python -m bench http-clients``) on a 2-core VM whose cores the daemon's cycle and
the benchmark's payload servers keep busy while the cycle scrapes: against one daemon
at ~300 KB payloads, 80 GETs every 1.37 s had a p99 of 17-31 ms with ``requests`` (in
the benchmark's process or in one of its own) and of 7-10 ms from this scraper.

Prints one line per GET: the wall time in seconds. Exits non-zero on any error.

    python -m bench.scraper URL [--every S] [--count N] [--seconds T]
"""

from __future__ import annotations

import argparse
import http.client
import sys
import time
from urllib.parse import urlsplit

#: A GET that is due less than this before the end of ``--seconds`` is not made.
END_MARGIN_S = 0.5


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--every", type=float, default=0.0,
                        help="seconds from one GET's due time to the next (0: back to back)")
    parser.add_argument("--count", type=int, help="GETs to make")
    parser.add_argument("--seconds", type=float, help="make GETs until this much time passed")
    args = parser.parse_args()
    if args.count is None and args.seconds is None:
        parser.error("give --count or --seconds")
    url = urlsplit(args.url)
    # One kept-alive connection, as a Prometheus keeps one per target.
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=5)
    start = time.perf_counter()
    made = 0
    while args.count is None or made < args.count:
        due = start + (made + 1) * args.every
        if args.seconds is not None and due > start + args.seconds - END_MARGIN_S:
            break
        time.sleep(max(0.0, due - time.perf_counter()))
        t0 = time.perf_counter()
        conn.request("GET", url.path or "/")
        response = conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - t0
        if response.status != 200:
            print(f"{args.url}: HTTP {response.status}", file=sys.stderr)
            return 1
        print(f"{elapsed:.6f}", flush=True)
        made += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
