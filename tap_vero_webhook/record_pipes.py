"""Record pipes: the tap's RECORD lines straight to the target, past Meltano's pipe.

Under `meltano run`, Meltano reads every line the tap writes and writes it again to
the target, about a third of a backlog load's CPU (docs/load-path.md). When the
target asks for it, the tap sends its RECORD lines through a named pipe instead:

- The target asks through the one channel Singer gives a target towards its tap,
  the state: the state it emits carries ``STATE_KEY`` (target-vero-postgres does
  unless its `record_pipes` setting is off). A tap run handed such a state sends
  records through pipes; any other state (a first run, another target's state, a
  `--full-refresh`) keeps every record on stdout. So the switch belongs to the
  pipeline (tap, target and their state), and target-duckdb or plain piping into
  any other target keep getting RECORD messages.
- Each pipe is announced on stdout by a Singer BATCH message whose encoding is
  ``FORMAT``: the pipe carries RECORD message lines, exactly the lines stdout
  would have carried. A target that does not know the format fails on the
  message instead of loading anything else.
- A pipe is closed before the tap's next STATE or SCHEMA message, so, as on
  stdout, the target holds every record a STATE message vouches for.

Where they live and when they go: a directory of the tap run's own in the temp
directory (mode 0700, named after the tap's pid), holding the pipe being opened;
the tap removes a pipe's name as soon as both ends are open, and the directory
when the run ends; a directory left by a killed run is removed by the next run.
A pipe keeps nothing on disk, so a killed run leaves no records behind to be
loaded twice (the next run re-reads the spool from its state, as on stdout).

Both ends are here, so the format is written once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import shutil
import stat
import tempfile
import time
import typing as t
from pathlib import Path
from urllib.parse import unquote, urlsplit

STATE_KEY = "record_pipes"
"""The state's key by which a target asks its tap for record pipes."""
FORMAT = "singer-record-lines"
"""The BATCH message's encoding format: the file is a pipe of RECORD message lines."""
DIRECTORY_PREFIX = "tap-vero-webhook-pipes-"
OPEN_TIMEOUT_SECONDS = 120.0
"""How long either end waits for the other to open a pipe before giving up."""
PIPE_BYTES = 1 << 20
"""The kernel buffer asked for each pipe (Linux's default limit for a user)."""
_F_SETPIPE_SZ = 1031
_POLL_SECONDS = 0.002


class PipeError(Exception):
    """A pipe the other end never opened, or a pipe that is not there."""


def requested(state: t.Mapping) -> bool:
    """Whether the target that wrote `state` reads record pipes."""
    asked = state.get(STATE_KEY)
    return isinstance(asked, dict) and asked.get("format") == FORMAT


def with_request(state: dict) -> dict:
    """`state` as a target that reads record pipes emits it."""
    return {**state, STATE_KEY: {"format": FORMAT}}


def batch_message(stream: str, pipe: Path) -> dict:
    return {
        "type": "BATCH",
        "stream": stream,
        "encoding": {"format": FORMAT, "compression": "none"},
        "manifest": [pipe.as_uri()],
    }


def is_pipe_batch(message: t.Mapping) -> bool:
    encoding = message.get("encoding")
    return isinstance(encoding, dict) and encoding.get("format") == FORMAT


class TapPipes:
    """The tap's side: a private directory, one pipe at a time, and a watch on the tap's
    stdout, whose reader (the target, or Meltano) going away ends the run."""

    def __init__(self, stdout_fd: int) -> None:
        remove_abandoned()
        self.directory = Path(tempfile.mkdtemp(prefix=f"{DIRECTORY_PREFIX}{os.getpid()}-"))
        self._made = 0
        self._stdout = select.poll()
        self._stdout.register(stdout_fd, 0)  # POLLERR: nobody reads stdout any more

    def check_reader(self) -> None:
        """BrokenPipeError if nobody reads the tap's stdout any more (a write there would
        fail the same way; records go to a pipe, so none is written there meanwhile)."""
        if self._stdout.poll(0):
            raise BrokenPipeError("the target stopped reading: nobody reads the tap's output")

    def make(self) -> Path:
        self._made += 1
        pipe = self.directory / f"{self._made:06d}.jsonl"
        os.mkfifo(pipe, 0o600)
        return pipe

    def open_for_writing(self, pipe: Path) -> int:
        """A blocking descriptor on `pipe` once the target has opened it; its name is
        removed then. Gives up if stdout's reader is gone or after the timeout."""
        deadline = time.monotonic() + OPEN_TIMEOUT_SECONDS
        while True:
            try:
                fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
            self.check_reader()
            if time.monotonic() > deadline:
                raise PipeError(
                    f"the target did not open the record pipe {pipe} within "
                    f"{OPEN_TIMEOUT_SECONDS:.0f} s"
                )
            time.sleep(_POLL_SECONDS)
        pipe.unlink()
        os.set_blocking(fd, True)
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)
        return fd

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def remove_abandoned() -> None:
    """Remove the pipe directories of tap runs that are gone (killed)."""
    for directory in Path(tempfile.gettempdir()).glob(f"{DIRECTORY_PREFIX}*"):
        pid = directory.name[len(DIRECTORY_PREFIX) :].partition("-")[0]
        try:
            if directory.lstat().st_uid != os.getuid() or not pid.isdigit():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(directory, ignore_errors=True)
        except OSError:
            continue


def open_for_reading(url: str, stdin_fd: int) -> t.BinaryIO:
    """The target's side: the pipe at `url` (a BATCH manifest entry), open for reading
    once the tap writes to it. Gives up if the tap's output ends first (it is gone)
    or after the timeout."""
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise PipeError(f"a record pipe is a local file:// URL, not {url!r}")
    path = unquote(parts.path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PipeError(
            f"the record pipe {path} is not there: the tap and the target must run on the "
            "same machine (or turn the target's record_pipes setting off)"
        ) from None
    deadline = time.monotonic() + OPEN_TIMEOUT_SECONDS
    watch = select.poll()
    watch.register(fd, select.POLLIN)
    if stat.S_ISFIFO(os.fstat(stdin_fd).st_mode):  # input that ends when the tap does
        watch.register(stdin_fd, select.POLLIN)
    while True:
        ready = dict(watch.poll(1000))
        if fd in ready:
            break
        if stdin_fd in ready or time.monotonic() > deadline:
            os.close(fd)
            raise PipeError(f"the tap never wrote to the record pipe {path}")
    os.set_blocking(fd, True)
    return open(fd, "rb", buffering=PIPE_BYTES)
