"""The systemd unit stays hardened and valid.

``systemd-analyze security --offline=yes`` scores the unit file without a running
systemd, and ``systemd-analyze verify`` parses it the way PID 1 would; both are
skipped where systemd-analyze is not installed. The static checks run everywhere.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "gpuwarden.service"
ENV_EXAMPLE = ROOT / "systemd" / "gpuwarden.env.example"
MAX_EXPOSURE = 2.0

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed"
)


def _directives(text: str) -> dict[str, list[str]]:
    """Key -> every value assigned to it, in order, comments and sections ignored."""
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture(scope="module")
def unit() -> dict[str, list[str]]:
    return _directives(UNIT.read_text())


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False
    )


def _verifiable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at a binary that exists on this machine.

    ``verify`` rejects a unit whose ExecStart binary is missing, and gpuwarden is
    not installed under /usr/local/bin here; everything else stays byte-identical.
    """
    true = shutil.which("true") or "/bin/true"
    text = UNIT.read_text()
    text, n = re.subn(r"(?m)^ExecStart=\S+", f"ExecStart={true}", text)
    assert n == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


# --- static checks --------------------------------------------------------------------


def test_service_type_and_watchdog(unit: dict[str, list[str]]) -> None:
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] == ["30s"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_exec_start_runs_the_daemon_with_the_config(unit: dict[str, list[str]]) -> None:
    (exec_start,) = unit["ExecStart"]
    assert exec_start.split()[1:] == ["run", "--config", "/etc/gpuwarden/gpuwarden.toml"]


def test_directories(unit: dict[str, list[str]]) -> None:
    assert unit["StateDirectory"] == ["gpuwarden"]
    assert unit["ConfigurationDirectory"] == ["gpuwarden"]
    assert unit["EnvironmentFile"] == ["-/etc/gpuwarden/gpuwarden.env"]
    assert "PYTHONUNBUFFERED=1" in unit["Environment"]


def test_nvidia_devices_are_reachable(unit: dict[str, list[str]]) -> None:
    # PrivateDevices=yes would hide /dev/nvidia*; access goes through the device cgroup.
    assert unit.get("PrivateDevices", ["no"])[-1] in ("no", "false", "0")
    assert unit["DevicePolicy"] == ["closed"]
    allowed = {value.split()[0]: value.split()[1] for value in unit["DeviceAllow"]}
    assert allowed.get("char-nvidia*") == "rw"


def test_network_families_allow_receivers(unit: dict[str, list[str]]) -> None:
    families = set(" ".join(unit["RestrictAddressFamilies"]).split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # Remote receivers (PagerDuty, Slack, webhooks) rule out an IP allow list.
    assert "IPAddressDeny" not in unit


def test_env_example_sets_nothing_and_says_chmod_600() -> None:
    text = ENV_EXAMPLE.read_text()
    assert "chmod 600" in text
    active = [
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    assert active == [], "the shipped example must not set anything, let alone a secret"
    for name in (
        "GPUWARDEN_WEBHOOK_SECRET",
        "GPUWARDEN_PAGERDUTY_ROUTING_KEY",
        "GPUWARDEN_LOG_LEVEL",
    ):
        assert f"#{name}=" in text


# --- the unit, the env example, the README's steps and the example config agree -------

README = ROOT / "README.md"
EXAMPLE_CONFIG = ROOT / "examples" / "gpuwarden.toml"


def _readme_steps() -> list[str]:
    """The commands of README's "Running under systemd" block, without ``sudo``."""
    section = README.read_text().split("## Running under systemd", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        for command in line.split("#", 1)[0].split("&&"):
            words = command.split()
            commands.append(" ".join(words[1:] if words[:1] == ["sudo"] else words))
    return [c for c in commands if c]


def _installed() -> dict[str, str]:
    """Repository file -> where the README's ``install`` steps put it."""
    out = {}
    for command in _readme_steps():
        words = command.split()
        if words[0] == "install":
            out[words[-2]] = words[-1]
    return out


def _venv() -> str:
    (venv,) = [c.split()[-1] for c in _readme_steps() if c.startswith("python3 -m venv ")]
    return venv


def test_readme_installs_every_file_the_unit_names(unit: dict[str, list[str]]) -> None:
    installed = _installed()
    for source in installed:
        assert (ROOT / source).is_file(), f"the README installs {source}, which does not exist"
    assert installed["systemd/gpuwarden.service"] == "/etc/systemd/system/gpuwarden.service"
    env_file = unit["EnvironmentFile"][0].removeprefix("-")
    assert installed["systemd/gpuwarden.env.example"] == env_file
    assert f"install -D -m 600 -o root -g root systemd/gpuwarden.env.example {env_file}" \
        in ENV_EXAMPLE.read_text()
    # The config the unit runs with is the starter config, checked before the start.
    config = unit["ExecStart"][0].split("--config", 1)[1].split()[0]
    assert installed["examples/gpuwarden.toml"] == config
    assert f"gpuwarden check-config {config}" in _readme_steps()
    # Documentation= names a file the steps install (no dangling link in `systemctl help`).
    for doc in unit.get("Documentation", []):
        for url in doc.split():
            assert url.startswith("file://"), url
            assert url.removeprefix("file://") in installed.values(), url


def test_one_install_path_for_the_virtualenv(unit: dict[str, list[str]]) -> None:
    venv = _venv()
    script = f"{venv}/bin/gpuwarden"
    steps = _readme_steps()
    assert f"{venv}/bin/pip install ." in steps
    (link,) = [c.split() for c in steps if c.startswith("ln ")]
    assert link[-2] == script
    # The unit runs the linked script; its drop-in example names the venv's own.
    assert unit["ExecStart"][0].split()[0] == link[-1]
    unit_text = UNIT.read_text()
    assert f"#   ExecStart={script} run --config" in unit_text
    # Every /opt path anywhere in the three files is inside that one virtualenv.
    for path in (UNIT, ENV_EXAMPLE, README):
        for found in re.findall(r"/opt/[\w./-]*", path.read_text()):
            assert found == venv or found.startswith(venv + "/bin/"), f"{path.name}: {found}"


def test_example_config_stores_in_the_state_directory(unit: dict[str, list[str]]) -> None:
    config = tomllib.loads(EXAMPLE_CONFIG.read_text())
    (state,) = unit["StateDirectory"]
    db = config["storage"]["url"].removeprefix("sqlite:///")
    assert Path(db).parent == Path("/var/lib") / state
    assert config["gpu"]["source"] == "nvml"


# --- systemd-analyze ------------------------------------------------------------------


@needs_analyze
def test_security_exposure_at_most_2() -> None:
    result = _analyze("security", "--offline=yes", "--no-pager", str(UNIT))
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for gpuwarden\.service: (\d+(?:\.\d+)?)", output)
    if match is None:
        pytest.skip(f"systemd-analyze security --offline unsupported here: {output[-500:]}")
    exposure = float(match.group(1))
    failed = "\n".join(line for line in output.splitlines() if line.startswith("✗"))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{failed}"


@needs_analyze
def test_security_threshold_exit_status() -> None:
    # --threshold makes systemd-analyze itself fail above the limit (scores are x10).
    result = _analyze(
        "security",
        "--offline=yes",
        "--no-pager",
        f"--threshold={int(MAX_EXPOSURE * 10)}",
        str(UNIT),
    )
    if "Overall exposure level" not in result.stdout + result.stderr:
        pytest.skip("systemd-analyze security --offline unsupported here")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@needs_analyze
def test_verify_is_clean(tmp_path: Path) -> None:
    copy = _verifiable_copy(tmp_path)
    result = _analyze("verify", "--man=no", str(copy))
    # verify exits 0 even for unknown keys or unparsable values ("..., ignoring"), so
    # any diagnostic that names our file counts as a failure.
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if str(copy) in line or "gpuwarden.service" in line
    ]
    if result.returncode != 0 and not ours:
        pytest.skip(f"systemd-analyze verify unusable here: {result.stderr[-500:]}")
    assert result.returncode == 0, result.stderr
    assert ours == [], "\n".join(ours)
