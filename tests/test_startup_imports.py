"""The first cycle is collected and stored before the heavy libraries load.

Time to the first stored sample is a benchmark figure (bench/bench_daemon.py); what a
test can pin without a clock is the cause of a regression: everything ``gpuwarden run``
imports up to its early SQLite write must stay free of SQLAlchemy, numpy, scipy,
prometheus_client and APScheduler (together ~0.5 s of imports on a small VM).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = ("sqlalchemy", "numpy", "scipy", "prometheus_client", "apscheduler")


def test_the_path_to_the_first_stored_sample_imports_nothing_heavy(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(f'node = "n"\n[storage]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n'
                      '[gpu]\nsource = "sim"\n[[servers]]\nname = "v"\nkind = "vllm"\n'
                      'metrics_url = "http://127.0.0.1:9/metrics"\n')
    code = f"""
import sys
from gpuwarden.cli.main import build_parser
args = build_parser().parse_args(["run", "--config", {str(config)!r}])
from gpuwarden.config import load_config
from gpuwarden.daemon.wiring import build_collectors
import gpuwarden.storage.early, requests
config = load_config(args.config)
session = requests.Session()
samples = [s for c in build_collectors(config, lambda: session) for s in c.collect()]
assert any(s.signal == "server_up" for s in samples) and len(samples) > 10
print(",".join(m for m in {HEAVY!r} if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "", f"imported before the first write: {out.stdout.strip()}"
