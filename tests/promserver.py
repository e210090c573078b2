"""Start the real ``prometheus`` binary for a test, on loopback, and stop it again.

Tests that compare gpuwarden with Prometheus need Prometheus itself, not a mock of it:
the point is to catch where our reading of its semantics is wrong. This helper owns
the process: a generated config (JSON is valid YAML, so no YAML library is needed), a
free 127.0.0.1 port, a storage directory under the test's tmp dir, a readiness wait,
and teardown by PID (terminate, then kill after a grace period). Nothing listens
beyond loopback.

    with PromServer(tmp_path, scrape_configs=[static_job("t", "127.0.0.1:8000")]) as prom:
        prom.query("up")
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["PromServer", "PrometheusError", "free_port", "prometheus_binary", "static_job"]


class PrometheusError(RuntimeError):
    """Prometheus did not start, or answered a query with an error."""


def prometheus_binary() -> str | None:
    """Path of the ``prometheus`` binary (PATH first, then Debian's location), or None."""
    found = shutil.which("prometheus")
    if found:
        return found
    debian = Path("/usr/bin/prometheus")
    return str(debian) if debian.is_file() else None


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the OS picks it; tiny race accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def static_job(
    name: str, target: str, *, interval: str = "1s", path: str = "/metrics"
) -> dict[str, Any]:
    """One scrape job of one static target (``host:port``)."""
    return {
        "job_name": name,
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "metrics_path": path,
        "static_configs": [{"targets": [target]}],
    }


class PromServer:
    """A Prometheus process owned by one test (or one module fixture)."""

    def __init__(
        self,
        workdir: Path,
        *,
        scrape_configs: list[dict[str, Any]] | None = None,
        scrape_interval: str = "1s",
        extra_config: dict[str, Any] | None = None,
        extra_args: list[str] | None = None,
        binary: str | None = None,
    ) -> None:
        found = binary or prometheus_binary()
        if found is None:
            raise PrometheusError("prometheus binary not found")
        self.binary = found
        self.workdir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config: dict[str, Any] = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": scrape_configs or [],
        }
        config.update(extra_config or {})
        self.config_path = self.workdir / "prometheus.yml"
        self.storage = self.workdir / "prom-data"
        self.log_path = self.workdir / "prometheus.log"
        self.extra_args = list(extra_args or [])
        self._config = config
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> PromServer:
        """Write the config, start the process, and wait until ``/-/ready`` says 200."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self._config, indent=1))
        args = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.storage}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            *self.extra_args,
        ]
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited {self._proc.returncode}: {self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise PrometheusError(f"prometheus not ready after {timeout}s: {self.log_tail()}")

    def stop(self, grace: float = 10.0) -> None:
        """Terminate our process by PID; kill it if it has not exited within ``grace``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``; raise on an error status."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"{path} {params}: {exc.read()[:500]!r}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, at: str | None = None) -> list[dict[str, Any]]:
        """Instant query; ``at`` is the API's ``time`` (e.g. ``"1700000000.123"``)."""
        params = {"query": expr} if at is None else {"query": expr, "time": at}
        data = self.api("query", **params)
        result: list[dict[str, Any]] = data["result"]
        return result

    def __enter__(self) -> PromServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
