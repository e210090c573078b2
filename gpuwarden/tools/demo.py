"""``gpuwarden demo``: the whole loop on a simulated node, for a machine with no GPU.

Simulated GPUs plus simulated vLLM servers on loopback that speak vLLM 0.32's real
``/metrics`` vocabulary (names, labels and bucket edges as recorded from a real vLLM,
see tests/fixtures/metrics/vllm-0.32-cpu-*.prom; their KV cache, offload connector and
speculative draft are reported as vLLM reports them), playing a scripted incident: a calm
start, then on ``vllm-0`` the KV cache fills at 1 %/s, preemptions start and token
latency climbs, while one GPU turns into a straggler. The daemon scrapes them exactly
as it would scrape a real server.

``build_incident`` is the story, once: the demo plays its steps and prints them as the
timeline up front (``Incident.timeline``); what it prints, where it listens and the
alerts as they change, is ``tools/demo_report.py``.
"""

from __future__ import annotations

import bisect
import logging
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)

# vLLM 0.32's bucket edges (from the recorded real scrape).
TTFT_EDGES = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
              7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_EDGES = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
             10.0, 20.0, 40.0, 80.0)
REQUEST_TIME_EDGES = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                      60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
# vLLM's 1-2-5 token buckets up to the model's context length (8,192 here).
TOKEN_EDGES = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)
# The KV cache of an 8B-class model with 128 KiB of KV per token, as vLLM's
# cache_config_info labels report it (a subset of the real labels, same names).
KV_BLOCKS, KV_BLOCK_SIZE, KV_BYTES_PER_TOKEN, MAX_MODEL_LEN = 4096, 16, 131072, 8192
# vLLM's MFU estimates (``--enable-mfu-metrics``) are per GPU. Each demo server is a
# 70B-class model in BF16 at tensor parallel 4 (the demo gives each 4 of the 8 GPUs): per
# GPU, 2 FLOPs per parameter per token processed, and every engine step reads the GPU's
# shard of the weights once (shared by the batch) plus the KV cache of the running
# sequences, and writes the KV of the new tokens. On an H100 that is a few % MFU and
# about a third of the memory bandwidth when calm, as a decode-bound server shows.
TENSOR_PARALLEL = 4
PARAMS_PER_GPU = 70e9 / TENSOR_PARALLEL
WEIGHT_BYTES_PER_GPU = 2 * PARAMS_PER_GPU
MEAN_CONTEXT_TOKENS = 1350  # a running sequence's context: prompt + half its output


@dataclass(slots=True)
class _Histogram:
    edges: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.edges) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.edges, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, cumulative = [], 0
        for edge, count in zip((*self.edges, float("inf")), self.counts, strict=True):
            cumulative += count
            le = "+Inf" if edge == float("inf") else repr(float(edge))
            out.append(f'{name}_bucket{{{labels},le="{le}"}} {float(cumulative)}')
        out.append(f"{name}_count{{{labels}}} {float(self.n)}")
        out.append(f"{name}_sum{{{labels}}} {self.total}")
        return out


@dataclass(slots=True)
class SimulatedVllmState:
    """A vLLM engine's counters, driven by a load level and a KV-pressure knob."""

    model: str
    rng: random.Random
    kv_usage: float = 0.35
    kv_target: float = 0.35
    kv_ramp_per_s: float = 0.0
    itl_base: float = 0.035
    ttft_base: float = 0.18
    running: int = 12
    waiting: int = 0
    preemptions: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    ttft: _Histogram = field(default_factory=lambda: _Histogram(TTFT_EDGES))
    itl: _Histogram = field(default_factory=lambda: _Histogram(ITL_EDGES))
    e2e: _Histogram = field(default_factory=lambda: _Histogram(TTFT_EDGES))
    queue: _Histogram = field(default_factory=lambda: _Histogram(REQUEST_TIME_EDGES))
    prefill: _Histogram = field(default_factory=lambda: _Histogram(REQUEST_TIME_EDGES))
    decode: _Histogram = field(default_factory=lambda: _Histogram(REQUEST_TIME_EDGES))
    prompt_len: _Histogram = field(default_factory=lambda: _Histogram(TOKEN_EDGES))
    output_len: _Histogram = field(default_factory=lambda: _Histogram(TOKEN_EDGES))
    # vLLM's gpu_memory_utilization: 0.85, the production ceiling (its default, 0.9, is
    # what GPUMemoryUtilizationConfigHigh flags), so the calm node raises no alert.
    memory_fraction: float = 0.85
    # The simulated servers run with a KV offload connector and a speculative draft, so
    # that their counters (which vLLM exports only when those are configured) show too.
    offload_queries: int = 0
    offload_hits: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    # vLLM's MFU estimates per GPU (see TENSOR_PARALLEL): FLOPs, device bytes read, written.
    flops: float = 0.0
    read_bytes: float = 0.0
    write_bytes: float = 0.0
    # Request phases and lengths draw from their own generator, so that adding them left
    # the incident's course (drawn from ``rng``) as it was.
    phase_rng: random.Random = field(default_factory=lambda: random.Random(7))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def advance(self, dt: float) -> None:
        rng = self.rng
        with self.lock:
            if self.kv_ramp_per_s:
                self.kv_usage = min(1.0, self.kv_usage + self.kv_ramp_per_s * dt)
            else:
                self.kv_usage += 0.2 * (self.kv_target - self.kv_usage) + rng.gauss(0, 0.005)
            self.kv_usage = min(max(self.kv_usage, 0.0), 1.0)
            pressure = max(0.0, self.kv_usage - 0.85) / 0.15  # 0 below 85 %, 1 when full
            self.waiting = round(pressure * 20 + rng.random())
            self.running = 12 + rng.randint(-2, 2) - round(pressure * 4)
            if pressure > 0.5 and rng.random() < pressure:
                self.preemptions += 1
            tokens = round(self.running * dt / (self.itl_base * (1 + 3 * pressure)))
            self.generation_tokens += tokens
            prompt = rng.randint(800, 1600)
            self.prompt_tokens += prompt
            self.prefix_queries += prompt
            self.prefix_hits += round(prompt * (0.6 - 0.4 * pressure))
            self._offload_and_speculate(prompt - round(prompt * (0.6 - 0.4 * pressure)), tokens)
            self._estimate(dt / (self.itl_base * (1 + 3 * pressure)), prompt + tokens)
            for _ in range(min(tokens, 400)):
                self.itl.observe(rng.lognormvariate(0, 0.25) * self.itl_base * (1 + 3 * pressure))
            for _ in range(rng.randint(1, 3)):
                first = rng.lognormvariate(0, 0.3) * self.ttft_base * (1 + 12 * pressure)
                self.ttft.observe(first)
                self.e2e.observe(first + 200 * self.itl_base * (1 + 3 * pressure))
                self._finish_request(first, pressure)

    def _offload_and_speculate(self, prefix_misses: int, tokens: int) -> None:
        """What the GPU prefix cache missed is looked up in the offload tier (about a third
        found there); every generated token was drafted, about 70 % of drafts accepted."""
        rng = self.phase_rng
        self.offload_queries += prefix_misses
        self.offload_hits += round(prefix_misses * rng.uniform(0.25, 0.4))
        drafted = round(tokens / rng.uniform(0.65, 0.75))
        self.draft_tokens += drafted
        self.accepted_tokens += tokens if drafted else 0

    def _estimate(self, steps: float, processed: int) -> None:
        """vLLM's per-GPU estimates for ``steps`` engine steps that processed ``processed``
        tokens (prompt and generated); drawn from no generator, so the incident's course
        is the same with them."""
        self.flops += 2 * PARAMS_PER_GPU * processed
        kv_read = self.running * MEAN_CONTEXT_TOKENS * KV_BYTES_PER_TOKEN
        self.read_bytes += steps * (WEIGHT_BYTES_PER_GPU + kv_read)
        self.write_bytes += processed * KV_BYTES_PER_TOKEN

    def _finish_request(self, ttft: float, pressure: float) -> None:
        """One finished request's phases and lengths: the queue takes the part of its
        time to first token that KV pressure adds, prefill the rest."""
        rng = self.phase_rng
        queued = ttft * (12 * pressure) / (1 + 12 * pressure)
        output = rng.randint(100, 400)
        self.queue.observe(queued)
        self.prefill.observe(ttft - queued)
        self.decode.observe(output * self.itl_base * (1 + 3 * pressure))
        self.prompt_len.observe(rng.randint(800, 1600))
        self.output_len.observe(output)

    def render(self) -> bytes:
        base = f'engine="0",model_name="{self.model}"'
        with self.lock:
            lines = [
                "# TYPE vllm:num_requests_running gauge",
                f"vllm:num_requests_running{{{base}}} {float(self.running)}",
                "# TYPE vllm:num_requests_waiting gauge",
                f"vllm:num_requests_waiting{{{base}}} {float(self.waiting)}",
                "# TYPE vllm:kv_cache_usage_perc gauge",
                f"vllm:kv_cache_usage_perc{{{base}}} {self.kv_usage}",
                "# TYPE vllm:cache_config_info gauge",
                f'vllm:cache_config_info{{block_size="{KV_BLOCK_SIZE}",engine="0",'
                f'gpu_memory_utilization="{self.memory_fraction}",'
                f'kv_cache_max_concurrency="{KV_BLOCKS * KV_BLOCK_SIZE / MAX_MODEL_LEN}",'
                f'kv_cache_memory_bytes="{KV_BLOCKS * KV_BLOCK_SIZE * KV_BYTES_PER_TOKEN}",'
                f'kv_cache_size_tokens="{KV_BLOCKS * KV_BLOCK_SIZE}",'
                f'num_gpu_blocks="{KV_BLOCKS}"}} 1.0',
            ]
            for name, value in (("prefix_cache_queries", self.prefix_queries),
                                ("prefix_cache_hits", self.prefix_hits),
                                ("num_preemptions", self.preemptions),
                                ("prompt_tokens", self.prompt_tokens),
                                ("generation_tokens", self.generation_tokens),
                                ("external_prefix_cache_queries", self.offload_queries),
                                ("external_prefix_cache_hits", self.offload_hits),
                                ("spec_decode_num_draft_tokens", self.draft_tokens),
                                ("spec_decode_num_accepted_tokens", self.accepted_tokens)):
                lines += [f"# TYPE vllm:{name}_total counter",
                          f"vllm:{name}_total{{{base}}} {float(value)}"]
            for name, amount in (("estimated_flops_per_gpu", self.flops),
                                 ("estimated_read_bytes_per_gpu", self.read_bytes),
                                 ("estimated_write_bytes_per_gpu", self.write_bytes)):
                lines += [f"# TYPE vllm:{name}_total counter",
                          f"vllm:{name}_total{{{base}}} {amount}"]
            for name, hist in (("time_to_first_token_seconds", self.ttft),
                               ("inter_token_latency_seconds", self.itl),
                               ("e2e_request_latency_seconds", self.e2e),
                               ("request_queue_time_seconds", self.queue),
                               ("request_prefill_time_seconds", self.prefill),
                               ("request_decode_time_seconds", self.decode),
                               ("request_prompt_tokens", self.prompt_len),
                               ("request_generation_tokens", self.output_len)):
                lines.append(f"# TYPE vllm:{name} histogram")
                lines += hist.lines(f"vllm:{name}", base)
        return ("\n".join(lines) + "\n").encode()


class SimulatedVllmServer:
    """Serves a :class:`SimulatedVllmState` as ``/metrics`` on a loopback port."""

    def __init__(self, state: SimulatedVllmState, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = state
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    body, ctype = outer.state.render(), "text/plain; version=0.0.4"
                elif self.path.startswith("/v1/models"):
                    body = (f'{{"object":"list","data":[{{"id":"{outer.state.model}",'
                            '"object":"model"}]}').encode()
                    ctype = "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="sim-vllm", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass(frozen=True, slots=True)
class IncidentStep:
    """One step of the scripted story: when (seconds from the start), what happens (and
    which rule should notice), and the change to the simulated node."""

    at: float
    text: str
    action: Callable[[], None]


@dataclass(slots=True)
class Incident:
    """The scripted story, played by the demo's loop; its timeline is what the demo
    prints before it starts."""

    steps: list[IncidentStep]
    done: set[int] = field(default_factory=set)

    def play(self, elapsed: float) -> list[IncidentStep]:
        """Start the steps due by ``elapsed`` seconds; return them, in order."""
        started = []
        for i, step in enumerate(self.steps):
            if i not in self.done and elapsed >= step.at:
                self.done.add(i)
                log.info("demo incident t=%3.0fs: %s", step.at, step.text)
                step.action()
                started.append(step)
        return started

    def timeline(self) -> list[tuple[float, str]]:
        return [(step.at, step.text) for step in self.steps]


# The story's times, seconds from the start. The KV cache starts climbing early, from
# where it is, so that a short run (``--duration 45``) still shows a firing alert:
# KVCacheSaturationSoon fires about 10 s into a smooth ramp. (A ramp that starts with
# a jump fires only once the jump has left its 30 s window: detectors/trend.py, no
# step over half the rise.) Recovery waits until GPUUtilizationSpread (a 60 s mean,
# then `for` 2 minutes) has fired for the straggler; the foreign process stays until
# VRAMHeadroomLow (`for` 5 minutes) has fired.
FOREIGN_PROCESS_AT, KV_RAMP_AT, LATENCY_AT, STRAGGLER_AT = 5.0, 10.0, 40.0, 55.0
RECOVERY_AT, FOREIGN_EXIT_AT = 240.0, 360.0


def build_incident(gpus: Any, servers: list[SimulatedVllmState], speed: float = 1.0) -> Incident:
    s0 = servers[0]
    last_gpu = len(gpus.gpus) - 1

    def kv_ramp() -> None:
        s0.kv_ramp_per_s = 0.01

    def latency_regression() -> None:
        s0.itl_base = 0.06

    def straggler() -> None:
        gpus.set_load(last_gpu, 0.25)

    def foreign_process() -> None:
        gpus.set_memory(0, 0.96)

    def foreign_process_exits() -> None:
        gpus.set_memory(0, None)

    def recover() -> None:
        s0.kv_ramp_per_s, s0.kv_target, s0.itl_base = 0.0, 0.4, 0.035
        gpus.set_load(last_gpu, gpus.gpus[0].load)

    return Incident([IncidentStep(at / speed, text, action) for at, text, action in (
        (0.0, "healthy: all GPUs ~60 % busy, KV cache ~35 %, ITL p95 ~50 ms", lambda: None),
        (FOREIGN_PROCESS_AT, "gpu 0: a foreign process takes device memory, headroom falls "
                             "to 4 % (VRAMHeadroomLow pending within seconds, fires after "
                             "5 min of it)",
         foreign_process),
        (KV_RAMP_AT, "vllm-0: KV cache climbs 1 %/s from ~35 % (KVCacheSaturationSoon ~10 s "
                     "later; KVCacheNearFull 30 s after it passes 90 %)", kv_ramp),
        (LATENCY_AT, "vllm-0: per-token latency regresses; with the full KV cache, ITL p95 "
                     "passes 130 ms and TTFT p95 2 s (TokenLatencyP95High, TTFTP95High)",
         latency_regression),
        (STRAGGLER_AT, f"gpu {last_gpu}: becomes a straggler at 25 % busy "
                       "(GPUUtilizationSpread after its 60 s mean and 2 min `for`)", straggler),
        (RECOVERY_AT, "recovery: vllm-0's KV pressure relieved, latency and the straggler "
                      "back (their alerts resolve within ~1 min; KVCapacityTooSmall looks "
                      "back 10 min)", recover),
        (FOREIGN_EXIT_AT, "gpu 0: the foreign process exits; headroom comes back over "
                          "~40 s (VRAMHeadroomLow resolves above 17 %)", foreign_process_exits),
    )])


DEMO_GPUS = 8
#: An example price of an H100 hour, so the demo shows cost per million tokens.
DEMO_GPU_HOUR_USD = 2.5


def demo_gpus(index: int, n_servers: int, n_gpus: int) -> range:
    """The GPUs of demo server ``index``: the node's GPUs split evenly, in order (two
    servers on eight GPUs: 0-3 and 4-7, tensor parallel 4 each)."""
    per = max(1, n_gpus // max(1, n_servers))
    start = min(index * per, n_gpus - per)
    return range(start, start + per)


def run_demo(duration: float, listen: str, workdir: str | None, n_servers: int = 2,
             out: TextIO | None = None) -> int:
    """Run the simulated node and the daemon for ``duration`` seconds (0: until Ctrl-C),
    telling the story on ``out`` (default: stdout): where it listens, the incident's
    timeline, the alerts as they change (``tools/demo_report.py``)."""
    from gpuwarden.address import DEFAULT_LISTEN
    from gpuwarden.collector.sim import SimulatedGpuCollector
    from gpuwarden.config import parse_config
    from gpuwarden.daemon.lifecycle import Daemon
    from gpuwarden.detectors.defaults import effective_rules
    from gpuwarden.tools.demo_report import DemoReport, base_url

    directory = Path(workdir or tempfile.mkdtemp(prefix="gpuwarden-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    states = [SimulatedVllmState(f"demo-llama-{i}", random.Random(rng.random()))
              for i in range(n_servers)]
    servers = [SimulatedVllmServer(state) for state in states]
    for server in servers:
        server.start()
    # Each server names its GPUs: its listener is this process, which is no ancestor of
    # the simulated GPU processes (their pids are fake), so /proc cannot attribute them.
    server_tables = "".join(
        f'[[servers]]\nname = "vllm-{i}"\nkind = "vllm"\nmetrics_url = "{s.url}/metrics"\n'
        f"gpus = {list(demo_gpus(i, n_servers, DEMO_GPUS))}\n"
        for i, s in enumerate(servers)
    )
    config = parse_config(
        f'node = "demo-node"\nlisten = "{listen}"\n[storage]\n'
        f'url = "sqlite:///{directory / "gpuwarden.db"}"\n[gpu]\nsource = "sim"\n'
        f'[cost]\ngpu_hour_usd = {DEMO_GPU_HOUR_USD}\n'
        + server_tables,
        "<demo>",
    )
    from gpuwarden.collector import server_collector
    from gpuwarden.collector.session import scrape_session

    session = scrape_session()
    gpus = SimulatedGpuCollector(config.node, DEMO_GPUS)
    collectors = [gpus, *(server_collector(s, node=config.node, session=session)
                          for s in config.servers)]
    daemon = Daemon(config, collectors=collectors)
    report = DemoReport(out or sys.stdout, effective_rules(config.rules), time.time())
    daemon.on_alert_events.append(report.on_events)
    incident = build_incident(gpus, states)
    try:
        daemon.start()
    except BaseException:
        session.close()
        for server in servers:
            server.stop()
        raise
    daemon.install_signal_handlers()
    host, _ = config.listen_host_port
    report.started = time.time()
    started = time.monotonic()
    report.banner(base_url(host, daemon.http_port), str(directory / "gpuwarden.db"),
                  duration=duration, servers=[s.name for s in config.servers], gpus=DEMO_GPUS,
                  default_port=listen == DEFAULT_LISTEN)
    report.timeline(incident.timeline(), duration)
    elapsed = 0.0
    try:
        while duration <= 0 or elapsed < duration:
            for step in incident.play(elapsed):
                report.step(step.at, step.text)
            for state in states:
                state.advance(1.0)
            report.poll(daemon.alerts_json(), time.time())
            if daemon.wait_stop(1.0):
                break
            elapsed = time.monotonic() - started
    except KeyboardInterrupt:
        pass
    finally:
        daemon.shutdown()
        session.close()
        for server in servers:
            server.stop()
        report.summary(time.monotonic() - started)
    return 0
