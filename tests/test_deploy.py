"""The shipped deployment files: systemd units that systemd itself accepts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import IN_CI, NATS_SERVER, ROOT

DEPLOY = ROOT / "deploy"
UNITS = (
    "vero-webhook.socket",
    "vero-webhook.service",
    "vero-meltano.service",
    "vero-meltano.timer",
)
INSTALLED_BINARIES = ("/opt/vero-webhook/bin/vero-webhook", "/srv/vero-meltano/.venv/bin/meltano")


def test_the_units_pass_systemd_analyze_verify(tmp_path):
    """`systemd-analyze verify` on the units as shipped, with only the binaries they start
    (installed elsewhere on a real host) pointed at one that exists here."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        reason = "systemd-analyze is not installed here (Debian: apt-get install systemd)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    for name in UNITS:
        text = (DEPLOY / name).read_text()
        for binary in INSTALLED_BINARIES:
            text = text.replace(binary, "/bin/true")
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        [analyze, "verify", *(str(tmp_path / name) for name in UNITS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "vero-webhook.socket" not in done.stderr, done.stderr


def test_the_socket_unit_queues_enough_connections_for_a_restart():
    socket_unit = (DEPLOY / "vero-webhook.socket").read_text()
    backlog = next(line for line in socket_unit.splitlines() if line.startswith("Backlog="))
    assert int(backlog.split("=", 1)[1]) >= 1024
    service = (DEPLOY / "vero-webhook.service").read_text()
    assert "Requires=vero-webhook.socket" in service


def test_the_drain_deadline_stays_under_systemds_stop_timeout():
    from tap_vero_webhook.listener.settings import ServerSettings
    from tap_vero_webhook.settings import default_of

    service = (DEPLOY / "vero-webhook.service").read_text()
    stop = next(line for line in service.splitlines() if line.startswith("TimeoutStopSec="))
    assert default_of(ServerSettings, "shutdown_timeout") < int(stop.split("=", 1)[1])


def test_the_haproxy_and_nats_server_configs_are_valid():
    """What each program itself says of the shipped config (`haproxy -c`, `nats-server -t`)."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    checks = [
        [haproxy, "-c", "-f", str(DEPLOY / "haproxy.cfg")],
        [str(NATS_SERVER), "-t", "-c", str(DEPLOY / "nats-server.conf")],
    ]
    for check in checks:
        if not shutil.which(check[0]) and not Path(check[0]).exists():
            reason = f"{check[0]} is not installed (make setup installs both)"
            if IN_CI:
                pytest.fail(reason)
            pytest.skip(reason)
        done = subprocess.run(check, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
