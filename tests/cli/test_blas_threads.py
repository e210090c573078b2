"""``gpuwarden run`` keeps numpy's OpenBLAS from starting a thread per core."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Imports numpy in a process that ran the daemon's entry point (here with a config that
# does not exist, so it stops right after setting up the process), then counts threads.
THREADS_AFTER_NUMPY = """
import os, sys
from gpuwarden.cli.main import main
if sys.argv[1] == "run":
    assert main(["run", "--config", sys.argv[2]]) != 0
import numpy
print(len(os.listdir("/proc/self/task")))
"""


def threads_after_numpy(*argv: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.endswith("NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", THREADS_AFTER_NUMPY, *argv], env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir() or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and two usable cores (OpenBLAS starts no thread on one)")
def test_run_imports_numpy_without_blas_threads(tmp_path: Path) -> None:
    # Without the entry point, OpenBLAS starts threads: the test can see them.
    assert threads_after_numpy("plain") > 1
    assert threads_after_numpy("run", str(tmp_path / "missing.toml")) == 1


def test_a_thread_count_set_by_the_operator_is_kept(tmp_path: Path) -> None:
    code = ("import os; from gpuwarden.cli.main import main; "
            f"main(['run', '--config', {str(tmp_path / 'missing.toml')!r}]); "
            "print(os.environ['OPENBLAS_NUM_THREADS'])")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "4"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.split()[-1] == "4"
