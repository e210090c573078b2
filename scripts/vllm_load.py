#!/usr/bin/env python3
"""Drive a bounded burst of completions at a local vLLM and print a JSON summary.

The vLLM integration tests (tests/integration/test_vllm.py) run this as a separate
process, so the load's threads do not compete for the GIL with the gpuwarden daemon the
test runs in-process. Two load shapes matter there:

- a shared prefix (``--prefix-words``) in front of every prompt, so vLLM's prefix cache
  gets hits;
- many long generations at once (``--requests`` above the server's ``--max-num-seqs``,
  long ``--max-tokens``), so requests queue and the small KV cache fills and preempts.

Every prompt word comes from ``WORDS``; ``scripts/vllm_tiny_model.py`` trains the tiny
model's tokenizer so that each of them is exactly one token, hence a prompt of N words is
N + 1 tokens (with the BOS token) and the tests can reason about KV-cache blocks. Prompts
are drawn from a seeded RNG before any request is sent, so a run is repeatable whatever
order the threads finish in.

Standard library only: it runs under any Python 3.11 (the project's venv or vLLM's).
Exits 1, with the first error on stderr, if any request fails or times out.

Usage: vllm_load.py --url http://127.0.0.1:PORT --model NAME [--requests N]
       [--concurrency C] [--max-tokens T] [--prompt-words W] [--prefix-words P]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# Short, common words (Python keywords and plain English): each is one token of the tiny
# model's tokenizer, with or without a leading space.
WORDS = (
    "def", "class", "import", "return", "self", "value", "print", "lambda", "yield", "async",
    "await", "list", "dict", "tuple", "the", "cache", "block", "token", "model", "server",
    "request", "queue", "memory", "batch", "prefix", "window", "alert", "rate", "time", "node",
    "data", "sample", "metric", "label", "gauge", "counter",
)


def prompts(n: int, words: int, prefix_words: int, seed: int) -> list[str]:
    """``n`` prompts of ``prefix_words`` shared words followed by ``words`` random ones."""
    rng = random.Random(seed)
    prefix = [rng.choice(WORDS) for _ in range(prefix_words)]
    return [" ".join(prefix + [rng.choice(WORDS) for _ in range(words)]) for _ in range(n)]


def complete(url: str, model: str, prompt: str, max_tokens: int,
             timeout: float) -> tuple[float, dict[str, int]]:
    """One /v1/completions request: (seconds it took, the response's usage)."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        # The tiny model has random weights and would stop at a random EOS: ignoring EOS
        # and asking for at least max_tokens makes every generation exactly max_tokens
        # long, so the KV-cache use of a run is known in advance.
        "ignore_eos": True,
        "min_tokens": max_tokens,
        "temperature": 1.0,
    }
    request = urllib.request.Request(
        url.rstrip("/") + "/v1/completions", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    began = time.monotonic()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.load(response)
    return time.monotonic() - began, answer["usage"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    todo = prompts(args.requests, args.prompt_words, args.prefix_words, args.seed)
    began = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        done = list(pool.map(
            lambda p: complete(args.url, args.model, p, args.max_tokens, args.timeout), todo))
    wall = time.monotonic() - began
    latencies = sorted(seconds for seconds, _ in done)
    completion_tokens = sum(usage["completion_tokens"] for _, usage in done)
    return {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "wall_s": round(wall, 2),
        "lat_p50_s": round(latencies[len(latencies) // 2], 3),
        "lat_max_s": round(latencies[-1], 3),
        "prompt_tokens": sum(usage["prompt_tokens"] for _, usage in done),
        "completion_tokens": completion_tokens,
        "gen_tok_per_s": round(completion_tokens / wall, 1) if wall > 0 else 0.0,
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the server's base URL")
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-words", type=int, default=20)
    parser.add_argument("--prefix-words", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds one request may take")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.max_tokens < 1:
        parser.error("--requests, --concurrency and --max-tokens must be at least 1")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except (OSError, ValueError, KeyError) as exc:  # URLError and timeouts are OSErrors
        print(f"vllm_load: request failed: {exc!r}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
