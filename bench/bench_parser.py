"""Prometheus text parser benchmark: ``python -m bench.bench_parser [--quick]``.

Why: gpuwarden parses every inference server's ``/metrics`` every few seconds on every
node, so parse cost is paid continuously; the target is a 100 KB payload in <= 2 ms of
CPU and >= 8x ``prometheus_client.parser.text_string_to_metric_families`` (the
reference, measured in the same run, its generator fully consumed).

Payloads: the recorded vLLM 0.32 scrape (tests/fixtures) and synthetic vLLM-shaped
payloads of ~100 KB and ~200 KB (latency/token histograms with vLLM's bucket layouts
and ``engine``/``le``/``model_name`` labels, counters with ``_created``, gauges).
CPU time is ``time.process_time``, best of N repeats (min filters scheduler noise).

Hostile inputs (``hostile_payloads``): 1 MB payloads built to make a parser backtrack,
re-scan or spend Python work per line (long runs of blanks after a name, ``{``, open
label values, escapes, digits, junk, seeded mutations of the real vLLM scrape...).
Each is timed interleaved with the valid 1 MB reference (the vLLM scrape repeated to
1 MB) and printed as a ratio; the target is <= 3x. Inputs made of many short lines
are also compared with a valid payload of as many lines (``a 1`` samples), because a
line costs Python work whatever it holds: see ``dense_reference``.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gpuwarden.collector.promtext import Exposition, parse
from gpuwarden.collector.promtext_memo import ParseMemo
from gpuwarden.collector.registry import SERVER_KINDS
from gpuwarden.collector.servers.base import map_exposition
from gpuwarden.collector.servers.compiled import MappingPlan, compile_mapping
from gpuwarden.errors import ExpositionParseError

MAX_BYTES = 16 * 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
VLLM_FIXTURE = ROOT / "tests" / "fixtures" / "metrics" / "vllm-0.32-cpu-after-load.prom"

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_TOKEN_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
_HISTOGRAMS = {
    "vllm:time_to_first_token_seconds": _LATENCY_BUCKETS,
    "vllm:e2e_request_latency_seconds": _LATENCY_BUCKETS,
    "vllm:inter_token_latency_seconds": _LATENCY_BUCKETS,
    "vllm:request_queue_time_seconds": _LATENCY_BUCKETS,
    "vllm:request_prefill_time_seconds": _LATENCY_BUCKETS,
    "vllm:request_decode_time_seconds": _LATENCY_BUCKETS,
    "vllm:request_prompt_tokens": _TOKEN_BUCKETS,
    "vllm:request_generation_tokens": _TOKEN_BUCKETS,
}
_COUNTERS = ("vllm:prompt_tokens", "vllm:generation_tokens", "vllm:num_preemptions")
_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting",
           "vllm:kv_cache_usage_perc")


def synthetic_payload(target_bytes: int) -> str:
    """A vLLM-shaped payload of at least ``target_bytes`` (grows the number of series)."""
    n = 1
    while True:
        text = _payload(n)
        if len(text.encode()) >= target_bytes:
            return text
        n += 1


def _payload(n_series: int) -> str:
    series = [f'engine="{i % 4}",model_name="org-{i}/Llama-3.1-8B-Instruct-v{i}"'
              for i in range(n_series)]
    out: list[str] = []
    for fam, buckets in _HISTOGRAMS.items():
        out.append(f"# HELP {fam} Histogram of {fam.split(':')[1].replace('_', ' ')}.")
        out.append(f"# TYPE {fam} histogram")
        for j, lbl in enumerate(series):
            count = 1000 + 37 * j
            engine, model = lbl.split(",", 1)
            for k, le in enumerate(buckets):
                out.append(f'{fam}_bucket{{{engine},le="{le}",{model}}} '
                           f"{float(count * (k + 1) // len(buckets))}")
            out.append(f'{fam}_bucket{{{engine},le="+Inf",{model}}} {float(count)}')
            out.append(f"{fam}_count{{{lbl}}} {float(count)}")
            out.append(f"{fam}_sum{{{lbl}}} {count * 0.123456789:.9g}")
    for fam in _COUNTERS:
        out += [f"# HELP {fam}_total Number of {fam}.", f"# TYPE {fam}_total counter"]
        out += [f"{fam}_total{{{lbl}}} {12345.0 + j}" for j, lbl in enumerate(series)]
        out += [f"# HELP {fam}_created Number of {fam}.", f"# TYPE {fam}_created gauge"]
        out += [f"{fam}_created{{{lbl}}} 1.7954270753e+09" for lbl in series]
    for fam in _GAUGES:
        out += [f"# HELP {fam} Gauge {fam}.", f"# TYPE {fam} gauge"]
        out += [f"{fam}{{{lbl}}} {0.5 + j / 1000}" for j, lbl in enumerate(series)]
    return "\n".join(out) + "\n"


MB = 1 << 20


def valid_reference(size: int = MB) -> str:
    """The recorded vLLM scrape repeated to ``size`` characters (whole lines)."""
    base = VLLM_FIXTURE.read_text(encoding="utf-8")
    text = (base * (size // len(base) + 1))[:size]
    return text[: text.rfind("\n") + 1]


def dense_reference(lines: int) -> str:
    """A valid payload of ``lines`` one-sample lines: the per-line cost of valid input."""
    return "a 1\n" * lines


def _mutated(seed: int, size: int) -> str:
    """The valid reference with seeded random edits: blank runs, quotes, braces, bytes."""
    rng = random.Random(seed)
    text = valid_reference(size)
    pieces = ["\t" * 20_000, " " * 20_000, "{" * 5_000, '"', "\\", ",", "=", "}", "\n",
              "#", 'a="' * 2_000, "9" * 20_000, "\x0b", "\u00e9"]
    for _ in range(rng.randint(5, 40)):
        at = rng.randrange(len(text))
        cut = rng.randint(0, 50)
        text = text[:at] + rng.choice(pieces) + text[at + cut:]
    return text[:size]


def hostile_payloads(size: int = MB) -> dict[str, tuple[bytes, int]]:
    """Named hostile inputs of about ``size`` bytes, each with its number of lines.

    The lines count selects the reference a test compares with: inputs of a few lines
    against the valid vLLM-shaped payload, inputs of many short lines (more lines than
    the reference has) against ``dense_reference`` of as many lines as well.
    """
    rng = random.Random(20251)
    n = size
    valid_head = "vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 1.0\n"
    texts: dict[str, str | bytes] = {
        "tabs after a name": "vllm:x" + "\t" * n + "\n",
        "spaces after a name": "vllm:x" + " " * n + "\n",
        "blanks then a brace": "vllm:x" + " \t" * (n // 2) + "{\n",
        "name then braces": "vllm:x" + "{" * n + "\n",
        "unterminated label value": 'vllm:x{a="' + "v" * n + "\n",
        'a=" repeated': "vllm:x{" + 'a="' * (n // 3) + "\n",
        "commas in a label set": 'vllm:x{a="1"' + "," * n + "} 1\n",
        "blanks around commas": 'vllm:x{a="1"' + " , " * (n // 3) + "} 1\n",
        "valid-looking 1 MB line": valid_head[:-5] + 'x="' + "y" * n + '"} 1\n',
        "digits as value": "vllm:x " + "9" * n + "\n",
        "digits then junk": "vllm:x " + "9" * n + "x\n",
        "value, blanks, junk": "vllm:x 1" + " " * n + "x\n",
        "backslash escapes": 'vllm:x{a="' + "\\\\" * (n // 2) + "\n",
        "escaped quotes": 'vllm:x{a="' + '\\"' * (n // 2) + "} 1\n",
        "comment then blanks": "#" + " " * n + "HELP\n",
        "HELP with blanks": "# HELP" + " \t" * (n // 2) + "\n",
        "random bytes": bytes(rng.getrandbits(8) for _ in range(n)),
        "random printable text": "".join(rng.choice("ab {}=\",#\t\n\\1.e") for _ in range(n)),
        "1 MB of newlines": "\n" * n,
        "junk lines": "x\n" * (n // 2),
        "bad value lines": "a b\n" * (n // 4),
        "HELP without name lines": "# HELP\n" * (n // 7),
        "valid and junk alternating": "a 1\nx\n" * (n // 6),
        "valid lines around a 1 MB junk line": valid_head + "x" * n + "\n" + valid_head,
    }
    # Lines just under the parser's 64 KiB line limit run every regex; 1 MB of them.
    k = 64 * 1024 - 100
    lines = n // k
    texts.update({
        "near-limit lines: tabs after a name": ("vllm:x" + "\t" * k + "\n") * lines,
        "near-limit lines: blanks then a brace": ("vllm:x" + " \t" * (k // 2) + "{\n") * lines,
        "near-limit lines: open label value": ('vllm:x{a="' + "v" * k + "\n") * lines,
        'near-limit lines: a=" repeated': ("vllm:x{" + 'a="' * (k // 3) + "\n") * lines,
        "near-limit lines: blanks around commas":
            ('vllm:x{a="1"' + " , " * (k // 3) + "} 1\n") * lines,
        "near-limit lines: escapes": ('vllm:x{a="' + "\\\\" * (k // 2) + "\n") * lines,
        "near-limit lines: digits then junk": ("vllm:x " + "9" * k + "x\n") * lines,
        "near-limit lines: HELP and blanks": ("# HELP" + " \t" * (k // 2) + "x\n") * lines,
    })
    for seed in range(5):
        texts[f"mutated vLLM scrape (seed {seed})"] = _mutated(seed, n)
    out: dict[str, tuple[bytes, int]] = {}
    for name, t in texts.items():
        data = t if isinstance(t, bytes) else t.encode("utf-8", "surrogatepass")
        out[name] = (data, data.count(b"\n"))
    return out


def parse_seconds(data: bytes | str) -> float:
    """Wall time of one full parse (an ExpositionParseError is a valid outcome)."""
    t0 = time.perf_counter()
    with contextlib.suppress(ExpositionParseError):
        parse(data, max_seconds=60.0)
    return time.perf_counter() - t0


def hostile_ratios(repeats: int) -> list[tuple[str, int, float, float]]:
    """(input, lines, ratio to the valid 1 MB payload, ratio to dense valid lines).

    Each input and its references are timed interleaved, best of ``repeats`` each, so
    that load on the machine affects both alike.
    """
    ref = valid_reference().encode()
    ref_lines = ref.count(b"\n")
    rows = []
    for name, (data, lines) in hostile_payloads().items():
        dense = dense_reference(lines).encode() if lines > ref_lines else None
        best = best_ref = best_dense = float("inf")
        for _ in range(repeats):
            best_ref = min(best_ref, parse_seconds(ref))
            best = min(best, parse_seconds(data))
            if dense is not None:
                best_dense = min(best_dense, parse_seconds(dense))
        rows.append((name, lines, best / best_ref,
                     best / best_dense if dense is not None else float("nan")))
    return rows


def _advanced(text: str, k: int) -> bytes:
    """The payload with every sample value changed (what a busy server's next scrape is)."""
    lines = []
    for line in text.splitlines():
        head, sep, value = line.rpartition(" ")
        new = line
        if sep and not line.startswith("#"):
            with contextlib.suppress(ValueError):
                new = f"{head} {float(value) + k!r}"
        lines.append(new)
    return ("\n".join(lines) + "\n").encode()


def scrape_path_rows(payloads: list[tuple[str, bytes]],
                     repeats: int) -> list[tuple[str, float, float]]:
    """Per payload: CPU of parse(only) + map_exposition, and of memo + plan, on
    scrapes with new values each time (two bodies alternating)."""
    mapping = SERVER_KINDS.load("vllm")
    wanted = mapping.read_names
    rows = []
    for label, data in payloads:
        bodies = [_advanced(data.decode(), k) for k in (1, 2)]
        turn = iter(range(10**9))

        def full(bodies: list[bytes] = bodies, turn: Iterator[int] = turn) -> object:
            exp = parse(bodies[next(turn) % 2], only=wanted)
            return map_exposition(mapping, exp, node="n", server="s", ts=1.0)

        memo = ParseMemo()
        memo.read(data, max_bytes=MAX_BYTES, max_seconds=1.0, only=wanted)
        got = memo.read(bodies[0], max_bytes=MAX_BYTES, max_seconds=1.0, only=wanted)
        assert not isinstance(got, Exposition), f"{label}: the memo did not learn"
        template, values = got
        plan = compile_mapping(mapping, template.layout_slots(), values, node="n",
                               server="s")
        assert plan is not None, f"{label}: no plan"

        def fast(bodies: list[bytes] = bodies, turn: Iterator[int] = turn,
                 memo: ParseMemo = memo, plan: MappingPlan = plan) -> object:
            got = memo.read(bodies[next(turn) % 2], max_bytes=MAX_BYTES, max_seconds=1.0,
                            only=wanted)
            assert not isinstance(got, Exposition)
            return plan.samples(got[1], 1.0)

        rows.append((label, _best_cpu(full, repeats), _best_cpu(fast, repeats)))
    return rows


def _best_cpu(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    repeats_ours, repeats_ref = (30, 5) if quick else (200, 20)
    payloads = [
        ("vLLM 0.32 recorded scrape", VLLM_FIXTURE.read_bytes()),
        ("synthetic vLLM ~100 KB", synthetic_payload(100 * 1024).encode()),
        ("synthetic vLLM ~200 KB", synthetic_payload(200 * 1024).encode()),
    ]
    print("| payload | size KB | samples | ours ms | ours MB/s | prometheus_client ms "
          "| prometheus_client MB/s | ratio | ours, vLLM families only (the collector) ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    wanted = SERVER_KINDS.load("vllm").read_names
    for label, data in payloads:
        text = data.decode()
        exp = parse(data)
        n_samples = sum(len(rows) for rows in exp.samples.values())
        ref_samples = sum(len(m.samples) for m in text_string_to_metric_families(text))
        if exp.errors or n_samples != ref_samples:
            print(f"{label}: sample count mismatch ({n_samples} vs {ref_samples}) "
                  f"or errors {exp.errors[:3]}", file=sys.stderr)
        ours = _best_cpu(lambda d=data: parse(d), repeats_ours)  # type: ignore[misc]
        ref = _best_cpu(
            lambda t=text: list(text_string_to_metric_families(t)),  # type: ignore[misc]
            repeats_ref,
        )
        only = _best_cpu(lambda d=data: parse(d, only=wanted), repeats_ours)  # type: ignore[misc]
        mb = len(data) / 1e6
        print(f"| {label} | {len(data) / 1024:.1f} | {n_samples} | {ours * 1e3:.3f} "
              f"| {mb / ours:.1f} | {ref * 1e3:.2f} | {mb / ref:.1f} | {ref / ours:.1f}x "
              f"| {only * 1e3:.3f} |")
    print("\nThe collector's scrape path after the fetch, per scrape of a server whose "
          "series stay the same and whose values change (the usual case): the full "
          "parse(only=...) + map_exposition, against the memo of the last scrape's layout + "
          "the mapping plan made for it (promtext_memo, servers/compiled), best of N.\n")
    print("| payload | parse + map ms | memo + plan ms | ratio |")
    print("|---|---|---|---|")
    for label, full, memo in scrape_path_rows(payloads, repeats_ours):
        print(f"| {label} | {full * 1e3:.3f} | {memo * 1e3:.3f} | {full / memo:.1f}x |")
    print("\nHostile 1 MB inputs: parse time / parse time of the valid 1 MB vLLM payload "
          "(and, for many-line inputs, / a valid payload of as many lines), interleaved, "
          f"best of {3 if quick else 7}. Target: <= 3x.\n")
    print("| input | lines | / valid 1 MB | / valid, as many lines |")
    print("|---|---|---|---|")
    for name, lines, ratio, dense in hostile_ratios(3 if quick else 7):
        dense_s = "-" if math.isnan(dense) else f"{dense:.2f}x"
        print(f"| {name} | {lines} | {ratio:.2f}x | {dense_s} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
