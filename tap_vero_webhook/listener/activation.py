"""Socket activation: the listening socket a service manager passes, as sd_listen_fds(3) says.

systemd (or anything that holds a socket for us: a test, a supervisor) opens and
binds the socket, sets ``LISTEN_PID`` to our pid and ``LISTEN_FDS`` to the number
of sockets, which start at fd 3. Because the manager keeps the socket open while
the listener restarts, the kernel queues new connections meanwhile instead of
refusing them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

LISTEN_FDS_START = 3
"""The first passed file descriptor (SD_LISTEN_FDS_START)."""
VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(ValueError):
    """The socket-activation environment names no usable listening socket."""


def inherited_socket(environ: MutableMapping[str, str] = os.environ) -> socket.socket | None:
    """The listening socket passed by socket activation, or None when there is none.

    Takes the socket the way sd_listen_fds(3) does: only when ``LISTEN_PID`` is this
    process, and unsets the variables so that no child process takes it too.
    Anything else about them is an `ActivationError` naming the variable.
    """
    if "LISTEN_FDS" not in environ and "LISTEN_PID" not in environ:
        return None
    pid_text, fds_text = environ.get("LISTEN_PID"), environ.get("LISTEN_FDS")
    if pid_text is None:
        raise ActivationError("LISTEN_FDS is set but LISTEN_PID is not: set both, or neither")
    if not pid_text.isdigit() or int(pid_text) != os.getpid():
        raise ActivationError(
            f"LISTEN_PID={pid_text[:20]} is not this process (pid {os.getpid()}): the socket "
            "was passed to another one; unset LISTEN_PID and LISTEN_FDS to bind --host/--port"
        )
    if fds_text is None or not fds_text.isdigit() or int(fds_text) < 1:
        raise ActivationError(
            f"LISTEN_FDS={(fds_text or '')[:20]} names no socket: it must be the number of "
            f"sockets passed from fd {LISTEN_FDS_START} on"
        )
    if int(fds_text) != 1:
        raise ActivationError(
            f"LISTEN_FDS={fds_text}: the listener takes one socket; give its socket unit "
            "one ListenStream="
        )
    sock = _listening_socket(LISTEN_FDS_START)
    for name in VARIABLES:
        environ.pop(name, None)
    return sock


def _listening_socket(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ActivationError(
            f"LISTEN_FDS=1 but fd {fd} is not a socket ({exc.strerror or exc})"
        ) from None
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ActivationError(f"LISTEN_FDS=1 but fd {fd} is not a TCP socket")
    if not listening:
        sock.detach()
        raise ActivationError(f"LISTEN_FDS=1 but the socket at fd {fd} is not listening")
    sock.set_inheritable(False)
    return sock
