"""The HTTP scrape collector for inference servers (vLLM, SGLang, TGI, Triton, llama.cpp).

A server that is down, hung, or answering garbage is *data* (``server_up 0`` feeds the
ServerDown rule), not a collector crash: every expected failure ends in exactly one
``server_up 0`` sample, a per-reason counter and one rate-limited warning line. Only
programming errors escape ``collect()``, to the daemon's catch-all wrapper.

How the body is fetched: a plain-http target (the usual one: a server on the node) with
libcurl (``curl_fetch.py``), which the daemon's collector runner drives for every server
at once on its own thread (``run.py``); anything else (https, credentials in the URL, a
session with a proxy or authentication, a target that redirects) with ``requests``.
The session may be given as a callable that makes it: ``requests`` (~4 MiB of RSS) is then
imported only by the first scrape that needs it, so a node whose servers are all plain
http never loads it for scraping.
Either way the body is streamed: a misbehaving server can send an endless body, so the
collector stops at ``max_bytes`` (counted after gzip decoding, so a compressed bomb stops
too), at ``timeout`` waiting for the answer and at ``timeout`` after it starts for the
body, so one slow server cannot hold the cycle much beyond its timeout.

Failure semantics, as an operator sees them (``gpuwarden_scrape_errors_total{reason}``,
``gpuwarden_scrape_invalid_lines_total``, ``server_up``):

* no usable answer (``refused``, ``timeout``, ``connection``, ``truncated``,
  ``http_status``, ``oversize``, ``parse``: a payload with no valid sample, e.g. an
  HTML error page): ``server_up 0``, the reason counted, nothing else emitted;
* a payload with some bad lines: every valid line is used, ``server_up 1``, each bad
  line counted in ``parse_errors_total`` (the invalid-lines counter);
* a payload that takes longer than ``parse_budget_s`` to parse (the parser is linear,
  so only a huge one can): the lines parsed until then are used, ``server_up 1`` (the
  server did answer), and ``reason="parse_timeout"`` is counted and warned about, so
  a dashboard shows a partly used scrape rather than a missing server.

Memory: the body is read in pieces of at most 64 KiB, never more than ``max_bytes`` + 1
bytes (after gzip decoding), and after a body of 1 MiB or more the freed pages are
handed back to the OS (glibc ``malloc_trim``): a single 50 MB answer leaves no lasting
RSS growth. Peak per scrape: about 2 x ``max_bytes`` while the body is joined, then the
body and its decoded text while it is parsed (and, for a payload of at most
``promtext_memo.MAX_LINES`` lines, one string per line while it is compared with the
last payload's layout).

CPU: a server prints the same series every scrape, so the collector keeps the last
payload's line layout (``promtext_memo``) and the mapping worked out for it
(``servers/compiled.py``): a payload whose lines differ from the last one's only in
their values is read by swapping the values in, and mapped by looking them up, with the
same result, bit for bit, as a full parse and ``map_exposition``. Anything else (a new
series, a timestamp, a bad line) takes the full path, which learns the new layout.
"""

from __future__ import annotations

import http.client
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import urllib3.exceptions
import urllib3.util

from gpuwarden.collector.base import Collector
from gpuwarden.collector.curl_fetch import Fetch, MultiFetch
from gpuwarden.collector.httpbody import DEFAULT_MAX_BYTES, read_raw_body
from gpuwarden.collector.promtext import Exposition
from gpuwarden.collector.promtext_memo import ParseMemo, Template
from gpuwarden.collector.registry import SERVER_KINDS
from gpuwarden.collector.servers.base import map_exposition, served_models
from gpuwarden.collector.servers.compiled import MappingPlan, compile_mapping
from gpuwarden.collector.session import SCRAPE_USER_AGENT
from gpuwarden.errors import ConfigError, ExpositionParseError, ScrapeFailure, one_line
from gpuwarden.model import Sample, make_labels
from gpuwarden.native_memory import release_freed_memory

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

# Ask for the classic text format: prometheus_client would otherwise negotiate OpenMetrics
# on a matching Accept header, and some servers (Triton) only speak 0.0.4 anyway.
_ACCEPT = "text/plain;version=0.0.4;q=1.0, */*;q=0.1"
# Scrapes served by one layout before its mapping plan is tried again after it could
# not be made (collector._map_values).
_REPLAN_AFTER = 64


def redact_url(url: str) -> str:
    """The URL without user:password, for log lines (secrets never reach logs)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


# What ``requests`` sends unchanged in a request line (it re-quotes anything else).
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9/._~:@!$&'()*+,;=%?-]*")


def _plain_http(url: str) -> bool:
    """Whether libcurl may fetch ``url``: plain http, no credentials, spelled as
    ``requests`` would send it (so both send the same request line); anything else
    (https, credentials, an unusual spelling) is left to ``requests``."""
    try:
        parts = urllib3.util.parse_url(url)
    except urllib3.exceptions.LocationParseError:
        return False
    path = parts.request_uri
    return not (parts.scheme != "http" or parts.auth or not parts.host or parts.fragment
                or _PLAIN_PATH.fullmatch(path) is None
                or url != f"http://{parts.netloc}{path}")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (requests and urllib3 nest deeply)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        wrapped: list[object] = [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
        todo.extend(w for w in wrapped if isinstance(w, BaseException))


def _classify(exc: BaseException) -> str:
    """Map a requests / urllib3 / socket exception onto the counted reason."""
    import requests

    chain = list(_chain(exc))
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "refused"
    if any(
        isinstance(e, TimeoutError | requests.Timeout | urllib3.exceptions.TimeoutError)
        for e in chain
    ):
        return "timeout"
    if any(
        isinstance(e, requests.exceptions.ChunkedEncodingError | http.client.IncompleteRead)
        for e in chain
    ):
        # Body shorter than Content-Length, or the connection closed mid-chunk.
        return "truncated"
    if any(
        isinstance(e, requests.exceptions.ContentDecodingError | urllib3.exceptions.DecodeError)
        for e in chain
    ):
        return "parse"  # a Content-Encoding that does not decode is a garbage payload
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return "bad_url"
    return "connection"


class ServerCollector(Collector):
    """Scrapes one inference server's ``/metrics`` and maps it to canonical signals.

    Attributes the daemon reads: ``scrape_errors_total`` (by reason: ``refused``,
    ``timeout``, ``connection``, ``truncated``, ``http_status``, ``oversize``, ``parse``,
    and ``parse_timeout`` for a payload only partly used, see the module docstring),
    ``parse_errors_total`` (rejected lines inside payloads that were still used),
    ``models`` (the model names the server last reported, for checkpoint tracking;
    kept across failed scrapes) and ``last_error``. ``collect()`` may be called from
    several threads; the counters are guarded by a lock.
    """

    warn_every_s: float = 60.0  # one identical warning per server+reason per minute
    parse_budget_s: float = 1.0  # parse time per scrape; beyond it the rest is dropped
    #: Every reason ``scrape_errors_total`` counts (``_classify``, ``_body``, ``collect``),
    #: exported at 0 from the start.
    scrape_error_reasons = ("bad_url", "connection", "http_status", "oversize", "parse",
                            "parse_timeout", "refused", "timeout", "truncated")

    def __init__(  # noqa: PLR0917 - the daemon's construction signature, positional
        self,
        node: str,
        server: str,
        kind: str,
        metrics_url: str,
        session: requests.Session | Callable[[], requests.Session],
        timeout: float = 2.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if kind not in SERVER_KINDS:
            raise ConfigError([f"server {server!r}: unknown kind {kind!r} "
                               f"(one of {', '.join(sorted(SERVER_KINDS))})"])
        if timeout <= 0 or max_bytes <= 0:
            raise ConfigError([f"server {server!r}: timeout and max_bytes must be positive"])
        self.node = node
        self.server = server
        self.kind = kind
        self._mapping = SERVER_KINDS.load(kind)
        self.metrics_url = metrics_url
        # A session, or what makes it on first use (module docstring): not called
        # while every scrape goes through libcurl.
        self._session: requests.Session | None = None if callable(session) else session
        self._make_session = session if callable(session) else None
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.name = f"server:{server}"
        self.scrape_errors_total: dict[str, int] = {}
        self.parse_errors_total = 0
        self.models: tuple[str, ...] = ()
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._last_warned: dict[str, tuple[float, int]] = {}  # reason -> (when, suppressed)
        # The last payload's layout, and the mapping worked out for it (module docstring).
        self._memo = ParseMemo()
        # (layout, its plan, retry the plan after this many memo hits, its models)
        self._plan: tuple[Template, MappingPlan | None, int, tuple[str, ...]] | None = None
        # Plain http URLs without credentials are fetched with libcurl (``curl_fetch``);
        # anything else, and a target that redirects, goes through requests.
        self._direct = _plain_http(metrics_url)
        self._fetch: Fetch | None = None  # the kept handle (and so connection)
        self._fetch_busy = threading.Lock()  # held while a transfer runs on it
        self._lone: MultiFetch | None = None  # runs collect()'s own transfers

    # ----------------------------------------------------------------------- collect

    def collect(self) -> list[Sample]:
        """Fetch (libcurl where it can, else requests), parse and map one scrape."""
        if not (self._direct and self._curl_allowed()):
            return self._samples(self._fetch_with_requests)
        fetch = self.begin_fetch()
        if fetch is None:  # a concurrent collect holds the kept transfer: one of its own
            fetch, multi = self._new_fetch(), MultiFetch(max_connections=1)
            try:
                return self._fetched_samples(fetch, *fetch.perform(multi))
            finally:
                multi.close()
                fetch.close()
        if self._lone is None:
            self._lone = MultiFetch(max_connections=1)
        try:
            result = fetch.perform(self._lone)
        except BaseException:
            self._fetch_busy.release()
            raise
        return self.finish_fetch(fetch, *result)

    def begin_fetch(self) -> Fetch | None:
        """The kept libcurl transfer for this target, reserved for one scrape (give it
        back with :meth:`finish_fetch`); None when this scrape must go through
        ``requests`` (:meth:`collect`) or the transfer is in use."""
        if not (self._direct and self._curl_allowed()):
            return None
        if not self._fetch_busy.acquire(blocking=False):
            return None
        if self._fetch is None:
            self._fetch = self._new_fetch()
        return self._fetch

    def finish_fetch(self, fetch: Fetch, code: int, message: str) -> list[Sample]:
        """This scrape's samples from the kept transfer, finished with libcurl's ``code``
        and ``message``; gives the transfer back."""
        try:
            return self._fetched_samples(fetch, code, message)
        finally:
            self._fetch_busy.release()

    def _fetched_samples(self, fetch: Fetch, code: int, message: str) -> list[Sample]:
        """The samples of a finished libcurl transfer. A redirect is left to ``requests``,
        now and from then on (it follows them)."""
        if code == 0 and fetch.redirected:
            self._direct = False
            return self._samples(self._fetch_with_requests)
        return self._samples(lambda: self._curl_body(fetch, code, message))

    def _curl_body(self, fetch: Fetch, code: int, message: str) -> bytes:
        try:
            return fetch.outcome(code, message)
        except ScrapeFailure as f:
            if f.reason == "http_status":
                raise self._http_status(fetch.status, f.detail) from None
            raise

    def _http_status(self, status: int, detail: str) -> ScrapeFailure:
        hint = self._mapping.metrics_hint
        if status in (404, 501) and hint:
            detail += f" ({hint})"  # the usual cause: metrics not switched on
        return ScrapeFailure("http_status", detail)

    @property
    def session(self) -> requests.Session:
        """The ``requests`` session of this collector's scrapes (made on first use)."""
        if self._session is None:
            assert self._make_session is not None
            self._session = self._make_session()
        return self._session

    def _new_fetch(self) -> Fetch:
        if self._session is None:  # the scrape session's own, unmade: its User-Agent
            headers = {"User-Agent": SCRAPE_USER_AGENT}
        else:
            headers = {k: v if isinstance(v, str) else v.decode("latin-1")
                       for k, v in self._session.headers.items()}
        headers["Accept"] = _ACCEPT
        return Fetch(self.metrics_url, headers, timeout=self.timeout, max_bytes=self.max_bytes)

    def _curl_allowed(self) -> bool:
        """Whether a plain GET is what ``requests`` would send with this session: no proxy,
        authentication, query parameters or cookie of its own. An unmade session is the
        daemon's scrape session (``collector/session.py``), which has none of them."""
        session = self._session
        if session is None:
            return True
        return not (session.trust_env or session.proxies or session.auth or session.params
                    or session.cookies)

    def _samples(self, fetch: Callable[[], bytes]) -> list[Sample]:
        """Parse and map the body ``fetch`` returns; a failure is ``server_up 0``."""
        try:
            got, ts = self._scrape(fetch)
        except ScrapeFailure as f:
            return self._failed(f.reason, f.detail)
        except ExpositionParseError as e:
            return self._failed("parse", str(e))

        models: tuple[str, ...] | None = None
        if isinstance(got, Exposition):
            exp = got
            samples = map_exposition(self._mapping, exp, node=self.node, server=self.server,
                                     ts=ts)
        else:
            exp, samples, models = self._map_values(*got, ts)
        if models is None:
            models = served_models(samples)
        with self._lock:
            recovered, self.last_error = self.last_error, None
            if models:
                self.models = models
            self.parse_errors_total += exp.invalid_lines
            if exp.truncated:
                self.scrape_errors_total["parse_timeout"] = (
                    self.scrape_errors_total.get("parse_timeout", 0) + 1)
        if recovered is not None:
            log.info("server %s (%s): scrape works again after: %s", self.server, self.kind,
                     recovered)
        if exp.truncated:
            self._warn("parse_timeout", "payload only partly used: %s", exp.errors[-1])
        if exp.invalid_lines:
            self._warn("invalid_lines", "%d invalid line(s) skipped, first: %.120r",
                       exp.invalid_lines, exp.errors[0])
        if (exp.samples or exp.skipped_lines) and not samples:
            self._warn("unmapped", "payload has no %s metric gpuwarden knows (wrong kind, "
                       "or the server's metrics are disabled?)", self.kind)
        samples.append(self._up(1.0, ts))
        return samples

    def _map_values(self, template: Template, values: list[float],
                    ts: float) -> tuple[Exposition, list[Sample], tuple[str, ...] | None]:
        """Map a payload that fit the last one's layout: by the plan worked out for that
        layout when there is one (``servers/compiled.py``; its models are known), else
        in full. A layout with no plan (a NaN where the table reads: the plan cannot be
        checked) is tried again after ``_REPLAN_AFTER`` scrapes."""
        plan = self._plan
        if plan is None or plan[0] is not template or (
                plan[1] is None and self._memo.hits >= plan[2]):
            made = compile_mapping(self._mapping, template.layout_slots(), values,
                                   node=self.node, server=self.server)
            models = served_models(made.samples(values, ts) or []) if made else ()
            plan = self._plan = (template, made, self._memo.hits + _REPLAN_AFTER, models)
        samples = plan[1].samples(values, ts) if plan[1] is not None else None
        if samples:  # none mapped: the full path, whose exposition says why
            return template.summary(), samples, plan[3]
        exp = template.exposition(values)
        return exp, map_exposition(self._mapping, exp, node=self.node, server=self.server,
                                   ts=ts), None

    def _scrape(self, fetch: Callable[[], bytes],
                ) -> tuple[Exposition | tuple[Template, list[float]], float]:
        """Fetch and parse; the body is freed (and its pages returned) before returning.

        A payload whose lines are the last one's with new values comes back as that
        layout and its values (``promtext_memo``), anything else as its full parse.
        """
        body = fetch()
        ts = time.time()
        size = len(body)
        try:
            # Only the families the mapping reads are parsed (most of a vLLM scrape is
            # histograms gpuwarden never uses); see promtext's ``only``.
            got = self._memo.read(body, max_bytes=self.max_bytes,
                                  max_seconds=self.parse_budget_s,
                                  only=self._mapping.read_names)
        finally:
            del body
        release_freed_memory(size)
        # An empty 200 is an answer (up, nothing to say yet); only rejected lines is not.
        if isinstance(got, Exposition) and (
                not got.samples and not got.skipped_lines and got.invalid_lines):
            raise ScrapeFailure("parse", f"no valid sample in {got.invalid_lines} lines")
        return got, ts

    def _fetch_with_requests(self) -> bytes:
        import requests

        try:
            resp = self.session.get(
                self.metrics_url,
                timeout=self.timeout,
                stream=True,
                headers={"Accept": _ACCEPT},
            )
        except requests.RequestException as e:
            raise ScrapeFailure(_classify(e), one_line(e)) from e
        with resp:
            return self._body(resp.raw)

    def _body(self, raw: urllib3.BaseHTTPResponse) -> bytes:
        """The body of a response whose headers are in: checked, then read."""
        if not 200 <= raw.status < 300:
            raise self._http_status(raw.status, f"HTTP {raw.status} {raw.reason}")
        declared = raw.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes and not raw.headers.get(
            "Content-Encoding"
        ):
            raise ScrapeFailure("oversize", f"Content-Length {declared} > {self.max_bytes}")
        try:
            return read_raw_body(raw, self.max_bytes, self.timeout)
        except ScrapeFailure:
            raise
        except (urllib3.exceptions.HTTPError, OSError) as e:  # requests' own are OSErrors
            raise ScrapeFailure(_classify(e), one_line(e)) from e

    def close(self) -> None:
        """Close the kept transfer and its connection."""
        if self._lone is not None:
            self._lone.close()
            self._lone = None
        if self._fetch is not None:
            self._fetch.close()
            self._fetch = None

    # ------------------------------------------------------------------- bookkeeping

    def _up(self, value: float, ts: float) -> Sample:
        labels = make_labels(node=self.node, server=self.server, kind=self.kind)
        return Sample("server_up", labels, value, ts)

    def _failed(self, reason: str, detail: str) -> list[Sample]:
        with self._lock:
            self.scrape_errors_total[reason] = self.scrape_errors_total.get(reason, 0) + 1
            self.last_error = f"{reason}: {detail}"
        self._warn(reason, "scrape failed (%s): %s", reason, detail)
        return [self._up(0.0, time.time())]

    def _warn(self, reason: str, msg: str, *args: object) -> None:
        """Log at most one line per reason per ``warn_every_s``, saying how many were held."""
        now = time.monotonic()
        with self._lock:
            last = self._last_warned.get(reason)
            if last is not None and now - last[0] < self.warn_every_s:
                self._last_warned[reason] = (last[0], last[1] + 1)
                return
            suppressed = last[1] if last is not None else 0
            self._last_warned[reason] = (now, 0)
        suffix = f" ({suppressed} similar suppressed)" if suppressed else ""
        log.warning("server %s (%s, %s): " + msg + suffix, self.server, self.kind,
                    redact_url(self.metrics_url), *args)
