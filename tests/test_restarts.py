"""Restarts that drop no request: socket activation and the drain on SIGTERM.

The test holds the listening socket itself, across restarts, the way systemd's
vero-webhook.socket holds it (socket activation is nothing but fd passing), and
eight senders post all along. Everything is a real process on a real socket.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from tests.helpers import (
    ACTIVATE,
    SENDERS,
    VERO_WEBHOOK,
    Senders,
    create_token,
    post_head,
    running_listener,
    spool_files,
    spooled,
    start_listener,
    wait_for,
)

RESTARTS = 5


def held_socket() -> socket.socket:
    """A bound, listening socket this test keeps open, like systemd's socket unit."""
    return socket.create_server(("127.0.0.1", 0), backlog=1024)


@pytest.mark.slow
@pytest.mark.parametrize("keep_alive", [False, True], ids=["new-connection-each", "keep-alive"])
def test_restarts_with_the_socket_held_drop_no_request(tmp_path, keep_alive):
    """Five restarts (SIGTERM, drain, exit, start again on the same socket) under eight
    senders: not one request fails, and the spool holds exactly the acknowledged
    events, each once: none is durable without its 2xx."""
    data_dir = tmp_path / "data"
    token = create_token(data_dir)
    with held_socket() as sock:
        port = sock.getsockname()[1]
        listener = start_listener(data_dir, held_socket=sock)
        senders = Senders(f"http://127.0.0.1:{port}/hooks/{token}", keep_alive)
        try:
            for _ in range(RESTARTS):
                sent = senders.requests_sent
                assert wait_for(lambda sent=sent: senders.requests_sent > sent + 20)
                assert listener.stop() == 0, listener.log()[-3000:]
                assert "drained in" in listener.log()
                listener = start_listener(data_dir, held_socket=sock)
            sent = senders.requests_sent
            assert wait_for(lambda: senders.requests_sent > sent + 20)
        finally:
            senders.finish()
            listener.stop()
    assert not senders.failures, senders.failures[:5]
    ids = [envelope["id"] for envelope in spooled(data_dir)]
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(senders.acknowledged)
    assert len(ids) > RESTARTS * SENDERS * 3


@pytest.mark.slow
def test_sigterm_without_a_held_socket_answers_every_event_it_stored(tmp_path):
    """The port closes with the process, so senders see refused connections; but every
    event in the spool got its 2xx, and the listener exits within its deadline."""
    with running_listener(tmp_path / "data", "--shutdown-timeout", "10", new_token=True) as first:
        senders = Senders(first.hook_url(), keep_alive=True)
        try:
            assert wait_for(lambda: senders.requests_sent > 200)
            first.process.send_signal(signal.SIGTERM)
            assert first.process.wait(timeout=10 + 30) == 0
        finally:
            senders.finish()
    assert "drained in" in first.log()
    ids = [envelope["id"] for envelope in spooled(first.data_dir)]
    assert len(ids) == len(set(ids)) > 0
    assert sorted(ids) == sorted(senders.acknowledged)


@pytest.mark.slow
def test_the_drain_deadline_holds_against_a_trickling_sender(tmp_path):
    """A sender trickling its body a byte at a time keeps its request in flight for ever;
    the drain still ends at --shutdown-timeout (3 s here; the channel timeout is 300 s),
    and the trickled request is never stored."""
    args = ("--shutdown-timeout", "3", "--channel-timeout", "300")
    with running_listener(tmp_path / "data", *args, new_token=True) as listener:
        before = spool_files(listener.data_dir)
        with socket.create_connection(listener.address, timeout=60) as trickle:
            head = post_head(
                listener.tokens[0], "Content-Type: application/json", "Content-Length: 5000"
            )
            trickle.sendall(head + b'{"type": "sent", "pad": "')
            done = threading.Event()

            def keep_trickling() -> None:
                while not done.wait(0.1):
                    try:
                        trickle.sendall(b"x")
                    except OSError:
                        return

            trickler = threading.Thread(target=keep_trickling)
            trickler.start()
            try:
                listener.process.send_signal(signal.SIGTERM)
                assert listener.process.wait(timeout=3 + 60) == 0
            finally:
                done.set()
                trickler.join()
    assert "gave up after" in listener.log()
    assert spool_files(listener.data_dir) == before


@pytest.mark.slow
def test_a_listener_started_while_the_old_one_drains_waits_for_the_spool(tmp_path):
    """Started while another still holds the spool, a listener waits (--spool-lock-timeout,
    30 s by default) and serves as soon as the first has gone. (Past the wait it refuses:
    tests/test_cli.py.)"""
    data_dir = tmp_path / "data"
    with running_listener(data_dir, new_token=True) as first:
        log = tmp_path / "second.log"
        with open(log, "wb") as out:
            second = subprocess.Popen(
                [VERO_WEBHOOK, "serve", "--data-dir", str(data_dir), "--port", "0"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            assert wait_for(lambda: "waiting up to 30 s" in log.read_text())
            first.stop()
            assert wait_for(lambda: "listening on" in log.read_text()), log.read_text()
            assert second.poll() is None
        finally:
            second.terminate()
            second.wait(timeout=60)


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"LISTEN_FDS": "1", "LISTEN_PID": "1"}, "LISTEN_PID=1 is not this process"),
        ({"LISTEN_FDS": "1", "LISTEN_PID": "not-a-pid"}, "LISTEN_PID=not-a-pid"),
        ({"LISTEN_FDS": "1"}, "LISTEN_PID is not"),
    ],
)
def test_a_socket_activation_environment_for_another_process_is_refused_by_name(
    data_dir, variables, named
):
    done = subprocess.run(
        [VERO_WEBHOOK, "serve", "--data-dir", str(data_dir)],
        env={**os.environ, **variables}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert named in done.stderr
    assert "Traceback" not in done.stderr
    assert not data_dir.exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("fd3", "named"),
    [
        ("file", "LISTEN_FDS=1 but fd 3 is not a socket"),
        ("unbound", "LISTEN_FDS=1 but the socket at fd 3 is not listening"),
        ("none", "LISTEN_FDS=0 names no socket"),
    ],
)
def test_listen_fds_that_names_no_usable_socket_is_refused_by_name(tmp_path, fd3, named):
    """Run exactly as systemd would start the service (fd 3, LISTEN_FDS, LISTEN_PID)."""
    data_dir = tmp_path / "data"
    argv = [VERO_WEBHOOK, "serve", "--data-dir", str(data_dir)]
    if fd3 == "none":
        shim = ACTIVATE.replace("LISTEN_FDS='1'", "LISTEN_FDS='0'")
        passed = open(os.devnull)  # noqa: SIM115
    elif fd3 == "file":
        shim, passed = ACTIVATE, open(tmp_path / "not-a-socket", "w")  # noqa: SIM115
    else:
        shim, passed = ACTIVATE, socket.socket()
    with passed:
        done = subprocess.run(
            [sys.executable, "-c", shim, str(passed.fileno()), *argv],
            pass_fds=(passed.fileno(),), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert named in done.stderr
    assert "Traceback" not in done.stderr
