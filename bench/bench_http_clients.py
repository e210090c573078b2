"""CPU per scrape of the HTTP clients gpuwarden could fetch ``/metrics`` with.

The recorded vLLM 0.32 CPU scrape (``tests/fixtures/metrics/vllm-0.32-cpu-after-load.prom``,
counters advancing on every GET) served on N loopback ports by a separate process, so
that only the client's CPU is counted (``time.process_time`` of this process). Each
round fetches every target once with each client, the clients interleaved round by
round (A B C A B C ...), on kept connections; the figures are medians over the rounds:

- ``requests``: ``Session.get`` per target on a pool of 8 threads (the daemon's way before
  ``collector/curl_fetch.py``, with the scrape session of ``collector/session.py``);
- ``urllib3 direct``: the same session's urllib3 pool asked directly (``urlopen``, body
  streamed), on the same pool of 8 threads;
- ``libcurl multi``: ``curl_fetch.MultiFetch`` running every target's ``Fetch`` at once
  on this thread, as the daemon's collector runner does.

    .venv/bin/python -m bench.bench_http_clients [--servers 16] [--rounds 40]
    .venv/bin/python -m bench http-clients --quick
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

from gpuwarden.collector.curl_fetch import Fetch, MultiFetch
from gpuwarden.collector.session import scrape_session

ACCEPT = {"Accept": "text/plain;version=0.0.4;q=1.0, */*;q=0.1"}

#: The payload servers' process: prints its ports, serves until stdin closes.
SERVE = """
import sys
from bench.bench_daemon import PAYLOAD, AdvancingPayload, serve_payloads
body = PAYLOAD.read_text()
servers = [s for _ in range(int(sys.argv[1]))
           for s in serve_payloads(AdvancingPayload(body).render, 1)]
print(",".join(str(s.server_address[1]) for s in servers), flush=True)
sys.stdin.read()
"""


def clients(urls: list[str]) -> dict[str, Callable[[], int]]:
    """Each client's 'fetch every target once', returning the bytes fetched."""
    session = scrape_session()
    pool = ThreadPoolExecutor(8)

    def with_requests() -> int:
        def one(url: str) -> int:
            with session.get(url, timeout=5, headers=ACCEPT) as resp:
                return len(resp.content)
        futures = [pool.submit(one, u) for u in urls]
        wait_futures(futures)
        return sum(f.result() for f in futures)

    def with_urllib3() -> int:
        adapter = session.get_adapter(urls[0])
        manager = adapter.poolmanager  # type: ignore[attr-defined]

        def one(url: str) -> int:
            raw = manager.connection_from_url(url).urlopen(
                "GET", "/metrics", headers={**session.headers, **ACCEPT}, retries=False,
                preload_content=False, decode_content=True, timeout=5)
            try:
                return len(raw.read())
            finally:
                raw.release_conn()
        futures = [pool.submit(one, u) for u in urls]
        wait_futures(futures)
        return sum(f.result() for f in futures)

    headers = {**{k: str(v) for k, v in session.headers.items()}, **ACCEPT}
    fetches = [Fetch(u, headers, timeout=5.0, max_bytes=8 << 20) for u in urls]
    multi = MultiFetch(max_connections=2 * len(urls))

    def with_curl() -> int:
        got = 0

        def done(fetch: Fetch) -> None:
            nonlocal got
            got += len(fetch.outcome(*multi.result_of(fetch)))
        for fetch in fetches:
            multi.add(fetch)
        multi.drive(time.monotonic() + 10, done)
        return got

    return {"requests": with_requests, "urllib3 direct": with_urllib3,
            "libcurl multi": with_curl}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="1,4,16", help="comma-separated N")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="10 rounds, N = 4")
    args = parser.parse_args()
    counts = [4] if args.quick else [int(n) for n in args.servers.split(",")]
    rounds = 10 if args.quick else args.rounds
    print("| servers | client | CPU per scrape (median) | vs libcurl multi |")
    print("|---|---|---|---|")
    for n in counts:
        proc = subprocess.Popen([sys.executable, "-c", SERVE, str(n)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            ports = proc.stdout.readline().strip().split(",")
            urls = [f"http://127.0.0.1:{p}/metrics" for p in ports]
            fns = clients(urls)
            size = {name: fn() for name, fn in fns.items()}  # connect, warm up
            per: dict[str, list[float]] = {name: [] for name in fns}
            for _ in range(rounds):
                for name, fn in fns.items():
                    started = time.process_time()
                    size[name] = fn()
                    per[name].append((time.process_time() - started) / n)
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(10)
        ref = statistics.median(per["libcurl multi"])
        for name, values in per.items():
            med = statistics.median(values)
            print(f"| {n} | {name} ({size[name] // n // 1024} KB) | {1000 * med:.3f} ms "
                  f"| {med / ref:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
