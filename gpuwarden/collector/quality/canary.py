"""Quality canaries: fixed prompts sent to each server's OpenAI-compatible API.

Why canaries: a bad checkpoint, a broken quantisation or kernels falling back to lower
precision degrade answers long before latency moves, and gpuwarden must catch that
without ever looking at user traffic. So it asks its own questions (``[quality]
canaries``, JSONL of ``{"prompt", "reference"}``, optional ``max_tokens`` and
``chat``), at temperature 0 with a fixed seed, and scores each answer against the
reference (``collector/similarity.py``).

Scheduling: the daemon calls ``collect()`` every cycle (1 s); a canary round must
neither burst N requests into a loaded server nor block the cycle on a slow API. Each
server gets one canary slot every ``every / N`` seconds (servers staggered inside a
slot) and at most one request in flight, run on this collector's own small thread
pool; ``collect()`` only starts what is due and drains what has finished, so it
returns in microseconds. A request that overruns its slot delays the next one (never
two at once), so a round then takes longer than ``every``.

Samples (labels node, server, model, plus canary where per answer):

* ``quality_canary_similarity`` and ``quality_answer_length`` (characters): one sample
  per answer, at the answer's time: the per-canary streams the CUSUM and KS detectors
  read (``detectors/drift.py``). ``canary`` is a 12-hex digest of prompt and
  reference: stable when the file is reordered, new (so a new baseline) when a canary
  is edited, and not the text.
* ``quality_similarity``: the mean over the latest complete round (every canary
  answered by one model; at least half of them when some failed), re-emitted every
  cycle so it behaves like any gauge (rules with ``for``, /metrics), until it is older
  than three rounds. ``model`` is the ``model`` field of the answers -- the served
  name -- so that after a rollback the new model's series starts afresh.

Privacy (README, Output quality): prompts, references and answers are never logged, stored or put in
an exception message; :class:`Canary` hides them from ``repr``. Failures are counted
by reason (``errors_total``, exported as ``gpuwarden_scrape_errors_total{collector=
"quality"}``) and logged rate-limited with server, canary id and reason only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from gpuwarden.collector.base import Collector
from gpuwarden.collector.quality.similarity import Scorer, similarity
from gpuwarden.errors import CollectorError
from gpuwarden.model import Sample, make_labels

log = logging.getLogger(__name__)

SEED = 20240601  # fixed: the same prompt must produce the same answer on a healthy server
DEFAULT_MAX_TOKENS = 128
MAX_RESPONSE_BYTES = 1 << 20
MAX_CANARIES = 1000
STALE_ROUNDS = 3.0


@dataclass(frozen=True, slots=True)
class Canary:
    """One canary line. ``repr`` shows only the id: texts must not reach a log."""

    id: str
    prompt: str = field(repr=False)
    reference: str = field(repr=False)
    max_tokens: int = DEFAULT_MAX_TOKENS
    chat: bool = False


def canary_id(prompt: str, reference: str) -> str:
    return hashlib.sha256(f"{prompt}\0{reference}".encode()).hexdigest()[:12]


def parse_canaries(text: str, source: str = "<canaries>") -> list[Canary]:
    """Parse JSONL canaries; raise ValueError naming the line (never quoting it)."""
    out: list[Canary] = []
    problems: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            problems.append(f"{source}:{lineno}: not a JSON object")
            continue
        if not isinstance(item, dict):
            problems.append(f"{source}:{lineno}: not a JSON object")
            continue
        prompt, reference = item.get("prompt"), item.get("reference")
        max_tokens = item.get("max_tokens", DEFAULT_MAX_TOKENS)
        chat = item.get("chat", False)
        unknown = sorted(set(item) - {"prompt", "reference", "max_tokens", "chat"})
        if unknown:
            problems.append(f"{source}:{lineno}: unknown keys {', '.join(unknown)}")
        elif not isinstance(prompt, str) or not prompt.strip():
            problems.append(f"{source}:{lineno}: prompt must be a non-empty string")
        elif not isinstance(reference, str) or not reference.strip():
            problems.append(f"{source}:{lineno}: reference must be a non-empty string")
        elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not (
                0 < max_tokens <= 8192):
            problems.append(f"{source}:{lineno}: max_tokens must be an integer in 1..8192")
        elif not isinstance(chat, bool):
            problems.append(f"{source}:{lineno}: chat must be true or false")
        else:
            out.append(Canary(canary_id(prompt, reference), prompt, reference, max_tokens, chat))
    if not out and not problems:
        problems.append(f"{source}: no canaries")
    if len(out) > MAX_CANARIES:
        problems.append(f"{source}: {len(out)} canaries, at most {MAX_CANARIES}")
    if problems:
        raise ValueError("; ".join(problems))
    return out


def load_canaries(path: str | Path) -> list[Canary]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read canaries: {type(exc).__name__}") from None
    return parse_canaries(text, str(path))


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one request produced: scores and sizes, never the texts."""

    canary: Canary
    ts: float
    model: str | None = None
    score: float | None = None
    length: int | None = None
    reason: str | None = None  # error reason when the canary got no score


@dataclass(slots=True)
class _Server:
    name: str
    api_url: str
    next_due: float = math.nan
    next_index: int = 0
    in_flight: Future[_Outcome] | None = None
    sent_at: float = 0.0
    served: str | None = None  # from /v1/models: the name to put in requests
    pass_scores: dict[str, tuple[str, float]] = field(default_factory=dict)
    pass_failed: int = 0
    latest: tuple[str, float, float] | None = None  # model, mean, ts of the last round
    failing: bool = False


class QualityCollector(Collector):
    """Sends canaries, scores answers; see the module docstring."""

    name = "quality"
    #: The reasons ``errors_total`` counts (``_ask``, ``_http``, ``_complete``), exported
    #: at 0 from the start; of the ``http_<n>xx`` family, the classes a server answers
    #: with (another is still counted, from its first error on).
    scrape_error_reasons = ("bad_response", "connection", "http_4xx", "http_5xx",
                            "internal", "oversized", "request", "timeout")

    def __init__(
        self,
        node: str,
        servers: Sequence[tuple[str, str]],
        canaries: Sequence[Canary],
        *,
        every: float = 60.0,
        timeout: float = 30.0,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        scorer: Scorer = similarity,
    ) -> None:
        if not canaries:
            raise ValueError("QualityCollector needs at least one canary")
        self.node = node
        self.canaries = list(canaries)
        self.every = every
        self.timeout = timeout
        self.spacing = every / len(self.canaries)
        self.session = session if session is not None else requests.Session()
        self.clock = clock
        self.scorer = scorer
        self.errors_total: dict[str, int] = {}
        self.answers_total = 0
        self._servers = [_Server(n, u.rstrip("/")) for n, u in servers]
        self._pool = ThreadPoolExecutor(max(1, len(self._servers)),
                                        thread_name_prefix="gpuwarden-canary")
        self._lock = threading.Lock()
        self._last_log: dict[str, float] = {}

    @property
    def scrape_errors_total(self) -> dict[str, int]:
        """The daemon exports this attribute as ``scrape_errors_total{collector,reason}``."""
        return self.errors_total

    # --- the cycle -------------------------------------------------------------------

    def collect(self) -> Iterable[Sample]:
        now = self.clock()
        out: list[Sample] = []
        with self._lock:
            for i, srv in enumerate(self._servers):
                if math.isnan(srv.next_due):  # first call: stagger servers inside a slot
                    srv.next_due = now + i * self.spacing / len(self._servers)
                if srv.in_flight is not None and srv.in_flight.done():
                    out.extend(self._finish(srv, srv.in_flight.result()))
                    srv.in_flight = None
                if srv.in_flight is None and now >= srv.next_due:
                    canary = self.canaries[srv.next_index]
                    srv.sent_at = now
                    srv.in_flight = self._pool.submit(self._ask, srv, canary)
                if srv.latest is not None:
                    model, mean, ts = srv.latest
                    if now - ts <= STALE_ROUNDS * self.every + self.timeout:
                        out.append(Sample("quality_similarity", self._labels(srv, model),
                                          mean, now))
            failing = [s.name for s in self._servers if s.failing]
        self.last_error = f"canaries failing on {', '.join(failing)}" if failing else None
        return out

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no request is in flight (for tests and orderly shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                busy = [s.in_flight for s in self._servers
                        if s.in_flight is not None and not s.in_flight.done()]
            if not busy:
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _labels(self, srv: _Server, model: str, **extra: str) -> tuple[tuple[str, str], ...]:
        return make_labels(node=self.node, server=srv.name, model=model, **extra)

    def _finish(self, srv: _Server, res: _Outcome) -> list[Sample]:
        """Account for one answer (or failure); close the round after the last canary."""
        out: list[Sample] = []
        if res.reason is None and res.score is not None and res.model is not None:
            self.answers_total += 1
            srv.pass_scores[res.canary.id] = (res.model, res.score)
            if srv.latest is not None and srv.latest[0] != res.model:
                srv.latest = None  # that model is no longer served: stop reporting it
            labels = self._labels(srv, res.model, canary=res.canary.id)
            out.append(Sample("quality_canary_similarity", labels, res.score, res.ts))
            out.append(Sample("quality_answer_length", labels, float(res.length or 0), res.ts))
            if srv.failing:
                log.info("quality canaries on %s answer again", srv.name)
            srv.failing = False
        else:
            reason = res.reason or "bad_response"
            self.errors_total[reason] = self.errors_total.get(reason, 0) + 1
            srv.pass_failed += 1
            srv.failing = True
            srv.served = None  # re-read /v1/models: the failure may be a model swap
            self._warn(srv.name, "quality canary %s on %s failed: %s",
                       res.canary.id, srv.name, reason)
        srv.next_index += 1
        if srv.next_index >= len(self.canaries):
            self._close_round(srv, res.ts)
        # The next slot, but never right behind a request that overran its own.
        srv.next_due = max(srv.sent_at + self.spacing, res.ts + 0.1 * self.spacing)
        return out

    def _close_round(self, srv: _Server, ts: float) -> None:
        models = {m for m, _ in srv.pass_scores.values()}
        answered = len(srv.pass_scores)
        if len(models) == 1 and answered * 2 >= len(self.canaries):
            mean = sum(s for _, s in srv.pass_scores.values()) / answered
            srv.latest = (models.pop(), mean, ts)
        elif len(models) > 1:
            log.info("quality round on %s spanned a model change (%d models): not averaged",
                     srv.name, len(models))
        srv.pass_scores = {}
        srv.pass_failed = 0
        srv.next_index = 0

    def _warn(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_log.get(key, -math.inf) >= 60.0:
            self._last_log[key] = now
            log.warning(msg, *args)

    # --- the request (on the pool) -----------------------------------------------------

    def _ask(self, srv: _Server, canary: Canary) -> _Outcome:
        try:
            if srv.served is None:
                srv.served = self._served_model(srv)
            answer, model = self._complete(srv, canary)
        except CollectorError as exc:
            return _Outcome(canary, self.clock(), reason=str(exc))
        except Exception:  # a bug here must cost one canary, not the collector
            log.exception("quality canary %s on %s: unexpected error", canary.id, srv.name)
            return _Outcome(canary, self.clock(), reason="internal")
        score = float(self.scorer(answer, canary.reference))
        return _Outcome(canary, self.clock(), model or srv.served or "unknown",
                        max(0.0, min(1.0, score)), len(answer))

    def _timeouts(self) -> tuple[float, float]:
        return (min(self.timeout, 3.0), self.timeout)

    def _served_model(self, srv: _Server) -> str:
        """The first model of ``/v1/models`` ("" when the server does not list any)."""
        try:
            body = self._http("GET", f"{srv.api_url}/v1/models", None)
        except CollectorError as exc:
            if str(exc) == "http_4xx":  # no model list: send requests without a model
                return ""
            raise
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, list) and data and isinstance(data[0], dict):
            ident = data[0].get("id")
            if isinstance(ident, str):
                return ident
        return ""

    def _complete(self, srv: _Server, canary: Canary) -> tuple[str, str | None]:
        payload: dict[str, Any] = {"max_tokens": canary.max_tokens, "temperature": 0.0,
                                   "top_p": 1.0, "seed": SEED, "n": 1, "stream": False}
        if srv.served:
            payload["model"] = srv.served
        if canary.chat:
            payload["messages"] = [{"role": "user", "content": canary.prompt}]
            path = "/v1/chat/completions"
        else:
            payload["prompt"] = canary.prompt
            path = "/v1/completions"
        body = self._http("POST", srv.api_url + path, payload)
        try:
            choice = body["choices"][0]
            text = choice["message"]["content"] if canary.chat else choice["text"]
        except (KeyError, IndexError, TypeError):
            raise CollectorError("bad_response") from None
        if not isinstance(text, str):
            raise CollectorError("bad_response")
        model = body.get("model")
        return text, model if isinstance(model, str) and model else None

    def _http(self, method: str, url: str, payload: dict[str, Any] | None) -> Any:
        """One request; raises CollectorError(reason) whose text is only the reason."""
        try:
            with self.session.request(method, url, json=payload, timeout=self._timeouts(),
                                      stream=True) as resp:
                if resp.status_code != 200:
                    raise CollectorError(f"http_{resp.status_code // 100}xx")
                raw = resp.raw.read(MAX_RESPONSE_BYTES + 1, decode_content=True)
        except requests.Timeout:
            raise CollectorError("timeout") from None
        except requests.ConnectionError as exc:
            reason = "timeout" if "timed out" in str(exc).lower() else "connection"
            raise CollectorError(reason) from None
        except requests.RequestException:
            raise CollectorError("request") from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise CollectorError("oversized")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise CollectorError("bad_response") from None


def quality_collector(config: Any, *, session: requests.Session | None = None,
                      clock: Callable[[], float] = time.time) -> Collector | None:
    """The canary collector for a :class:`~gpuwarden.config.Config`, or None.

    None when ``[quality] canaries`` is unset or no server has an ``api_url``. A
    canaries file that cannot be read or parsed is not fatal: the collector raises
    ``CollectorError`` each cycle (so ``gpuwarden_collector_success{collector="quality"}``
    reads 0 and the log says which line is wrong) and retries reading it every ``every``.
    """
    q = config.quality
    servers = [(s.name, s.api_url) for s in config.servers if s.api_url]
    if not q.canaries or not servers:
        return None
    try:
        canaries = load_canaries(q.canaries)
    except ValueError as exc:
        log.error("quality canaries disabled until the file is fixed: %s", exc)
        return _Unreadable(config, session, clock, str(exc))
    return QualityCollector(config.node, servers, canaries, every=q.every, timeout=q.timeout,
                            session=session, clock=clock)


class _Unreadable(Collector):
    """Stands in for the canary collector while its file is unusable; retries it."""

    name = "quality"

    def __init__(self, config: Any, session: requests.Session | None,
                 clock: Callable[[], float], problem: str) -> None:
        self._config, self._session, self._clock = config, session, clock
        self.problem = problem
        self._retry_at = clock() + config.quality.every
        self._inner: Collector | None = None

    def collect(self) -> Iterable[Sample]:
        if self._inner is None and self._clock() >= self._retry_at:
            self._retry_at = self._clock() + self._config.quality.every
            inner = quality_collector(self._config, session=self._session, clock=self._clock)
            if isinstance(inner, QualityCollector):
                log.info("quality canaries loaded")
                self._inner = inner
            elif isinstance(inner, _Unreadable):
                self.problem = inner.problem
        if self._inner is None:
            raise CollectorError(f"canaries unusable: {self.problem}")
        samples = self._inner.collect()
        self.last_error = self._inner.last_error
        return samples

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
