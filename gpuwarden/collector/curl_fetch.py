"""Fetching ``/metrics`` bodies with libcurl (``pycurl``), many targets at once on one thread.

Why not ``requests`` for these: a scrape of a plain-http target on the node is a GET on a
kept connection, and everything ``requests`` and urllib3 do around it in Python (request
preparation, ``http.client``'s header parsing through the ``email`` package, the thread
hop to a pool worker per target) cost 0.4-0.8 ms of CPU per scrape of a 53 KB vLLM
payload on this project's 2-core machine; libcurl's multi interface fetches the same
bodies for 0.1-0.3 ms each, all targets on the calling thread (``python -m bench
http-clients`` measures both, interleaved). ``requests`` stays the client for what needs
it (https, credentials, a redirect, a proxy from the environment:
``scrape.ServerCollector``).

Same limits as ``httpbody.read_raw_body``, enforced while the bytes arrive:

* ``max_bytes`` after decoding (libcurl hands the write callback decoded gzip/deflate
  pieces, so a compressed bomb stops at the cap), and a ``Content-Length`` over it fails
  before the body is read;
* ``timeout`` to connect, ``timeout`` from the request to the first byte of the answer,
  and ``timeout`` from there to the end of the body (a server dribbling a byte at a time
  is cut off), checked by :class:`MultiFetch` between socket events;
* no proxy from the environment, no redirect followed (:attr:`Fetch.redirected` says so:
  the caller hands the target to ``requests``), no retry: the next cycle is the retry.

Each :class:`Fetch` keeps its easy handle, so its connection is reused from one scrape to
the next (libcurl keeps it in the multi handle's connection cache).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Mapping

import pycurl

from gpuwarden.errors import ScrapeFailure
from gpuwarden.native_memory import release_freed_memory

#: What libcurl reads of the socket per call (and so the most a write call hands over):
#: each call into Python takes the GIL, which a busy daemon may make it wait for.
_BUFFER = 128 * 1024
#: Encodings asked for (and decoded by libcurl), as ``requests`` asks by default.
ACCEPT_ENCODING = "gzip, deflate"


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class Fetch:
    """One target's GET, done again every scrape on the same handle.

    Not thread-safe: one transfer at a time (:class:`MultiFetch` runs it, or
    :meth:`perform` for a lone fetch).
    """

    def __init__(self, url: str, headers: Mapping[str, str], *, timeout: float,
                 max_bytes: int) -> None:
        self.url = url
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.curl = curl = pycurl.Curl()
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP)
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.PROXY, "")  # never a proxy from the environment
        curl.setopt(pycurl.NOPROXY, "*")
        curl.setopt(pycurl.FOLLOWLOCATION, 0)
        curl.setopt(pycurl.ACCEPT_ENCODING, ACCEPT_ENCODING)
        curl.setopt(pycurl.HTTPHEADER, [f"{k}: {v}" for k, v in headers.items()
                                        if k.lower() not in ("accept-encoding", "connection")])
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, _ms(timeout))
        # A backstop only: MultiFetch cuts each phase at ``timeout`` itself.
        curl.setopt(pycurl.TIMEOUT_MS, _ms(3 * timeout))
        curl.setopt(pycurl.MAXFILESIZE_LARGE, max_bytes)
        curl.setopt(pycurl.BUFFERSIZE, _BUFFER)
        # The body only: what is read of the status and headers is asked of libcurl
        # (getinfo), with no Python call per header line.
        curl.setopt(pycurl.WRITEFUNCTION, self._write)
        self._chunks: list[bytes] = []
        self._size = 0
        self.started = 0.0
        self.answered_at: float | None = None  # when the first byte of the answer came
        self._cut: ScrapeFailure | None = None  # why a callback stopped the transfer

    def start(self) -> None:
        """Forget the last transfer; the clock of this one starts now."""
        self._chunks = []
        self._size = 0
        self.answered_at = None
        self._cut = None
        self.started = time.monotonic()

    @property
    def deadline(self) -> float:
        """When the phase the transfer is in (waiting for the answer, then reading it)
        runs out of time."""
        if self.answered_at is None:
            first_byte = self.curl.getinfo(pycurl.STARTTRANSFER_TIME)  # 0.0 until then
            if first_byte > 0:
                self.answered_at = self.started + first_byte
        return (self.started if self.answered_at is None else self.answered_at) + self.timeout

    def _write(self, data: bytes) -> int | None:
        self._size += len(data)
        if self._size > self.max_bytes:
            self._chunks.clear()  # nothing of a refused body is kept
            self._cut = ScrapeFailure("oversize", f"body over {self.max_bytes} bytes")
            return 0  # libcurl stops the transfer (CURLE_WRITE_ERROR)
        self._chunks.append(data)
        return None

    def cut_off(self, failure: ScrapeFailure) -> None:
        """Note why the transfer is being stopped from outside (its deadline)."""
        self._cut = failure
        self._chunks.clear()

    @property
    def redirected(self) -> bool:
        """The last transfer's answer was a redirect (3xx with a Location)."""
        return 300 <= self.status < 400 and bool(self.curl.getinfo(pycurl.REDIRECT_URL))

    @property
    def status(self) -> int:
        return int(self.curl.getinfo(pycurl.RESPONSE_CODE))

    def outcome(self, code: int, message: str) -> bytes:
        """The body of a transfer that ended with libcurl's ``code`` (0: it completed),
        or the :class:`ScrapeFailure` saying why there is none."""
        chunks, self._chunks = self._chunks, []
        failure = self._cut
        if failure is None and code != 0:
            failure = ScrapeFailure(*_reason(self.curl, code, message, self.max_bytes))
        if failure is None:
            status = self.status
            if 200 <= status < 300:
                return b"".join(chunks)
            failure = ScrapeFailure("http_status", f"HTTP {status}")
        size = self._size
        del chunks  # a refused body's pages go back to the OS before the next scrape
        release_freed_memory(size)
        raise failure

    def perform(self, multi: MultiFetch) -> tuple[int, str]:
        """Run this one transfer to its end on the calling thread, on ``multi`` (whose
        connection cache keeps the connection for the next one); libcurl's code and
        message, for :meth:`outcome`."""
        multi.add(self)
        multi.drive(None, lambda _fetch: None)
        return multi.result_of(self)

    def close(self) -> None:
        self.curl.close()


def _reason(curl: pycurl.Curl, code: int, message: str, max_bytes: int) -> tuple[str, str]:
    """The counted reason (``scrape.ServerCollector``'s) of libcurl error ``code``."""
    if code == pycurl.E_COULDNT_CONNECT:
        refused = curl.getinfo(pycurl.OS_ERRNO) == errno.ECONNREFUSED
        return ("refused" if refused else "connection"), message
    if code == pycurl.E_OPERATION_TIMEDOUT:
        return "timeout", message
    if code == pycurl.E_PARTIAL_FILE:  # closed before Content-Length, or mid-chunk
        return "truncated", message
    if code == pycurl.E_FILESIZE_EXCEEDED:  # by its Content-Length, or as it arrived
        return "oversize", f"body over {max_bytes} bytes"
    if code == pycurl.E_BAD_CONTENT_ENCODING:
        return "parse", message  # a Content-Encoding that does not decode: garbage
    return "connection", message


class MultiFetch:
    """Runs many :class:`Fetch` transfers at once on the calling thread.

    ``add`` starts a transfer; ``drive`` moves every transfer on until all are done or a
    deadline passes, calling ``on_done`` with each as it completes (a transfer still
    running then goes on at the next ``drive``); ``result_of`` tells how one ended.
    """

    def __init__(self, max_connections: int = 64) -> None:
        self._multi = pycurl.CurlMulti()
        # Kept connections: one per target plus room (libcurl's default would follow
        # the number of transfers running, and close idle ones between cycles).
        self._multi.setopt(pycurl.M_MAXCONNECTS, max_connections)
        self._active: dict[int, Fetch] = {}
        self._results: dict[int, tuple[int, str]] = {}

    def set_max_connections(self, n: int) -> None:
        self._multi.setopt(pycurl.M_MAXCONNECTS, max(n, 1))

    @property
    def running(self) -> int:
        return len(self._active)

    def add(self, fetch: Fetch) -> None:
        fetch.start()
        self._results.pop(id(fetch), None)
        self._multi.add_handle(fetch.curl)
        self._active[id(fetch.curl)] = fetch

    def result_of(self, fetch: Fetch) -> tuple[int, str]:
        """libcurl's code and message for ``fetch``'s last transfer (0, "": completed)."""
        return self._results.pop(id(fetch))

    def _done(self, curl: pycurl.Curl, code: int, message: str,
              on_done: Callable[[Fetch], object]) -> None:
        fetch = self._active.pop(id(curl))
        self._multi.remove_handle(curl)
        self._results[id(fetch)] = (code, message)
        on_done(fetch)

    def drive(self, until: float | None, on_done: Callable[[Fetch], object]) -> None:
        """Move the transfers on until none is left or ``until`` (``time.monotonic``)."""
        multi = self._multi
        while self._active:
            while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                pass
            while True:
                queued, ok, failed = multi.info_read()
                for curl in ok:
                    self._done(curl, 0, "", on_done)
                for curl, code, message in failed:
                    self._done(curl, code, message, on_done)
                if not queued:
                    break
            now = time.monotonic()
            for fetch in [f for f in self._active.values() if f.deadline <= now]:
                phase = "answer" if fetch.answered_at is None else "body"
                fetch.cut_off(ScrapeFailure("timeout", f"{phase} not read within "
                                                       f"{fetch.timeout}s"))
                self._done(fetch.curl, pycurl.E_OPERATION_TIMEDOUT, "", on_done)
            if not self._active or (until is not None and now >= until):
                return
            wait = min(f.deadline for f in self._active.values()) - now
            if until is not None:
                wait = min(wait, until - now)
            curl_ms = multi.timeout()
            if curl_ms >= 0:
                wait = min(wait, curl_ms / 1000)
            if wait > 0:
                multi.select(wait)

    def cancel(self) -> None:
        """Stop every running transfer, without a callback."""
        for fetch in list(self._active.values()):
            self._multi.remove_handle(fetch.curl)
        self._active.clear()
        self._results.clear()

    def close(self) -> None:
        """:meth:`cancel`, and close the kept connections."""
        self.cancel()
        self._multi.close()
