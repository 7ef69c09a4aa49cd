"""The data directory: the one place its layout is defined.

The listener's ``--data-dir`` (the tap's ``data_dir``) holds everything on disk,
each entry written by one party::

    DATA_DIR/                          0700; files 0600, folders 0700
      spool/                           accepted events (spool/local.py): listener writes, tap reads
        00000000000000000001.jsonl     segments, named after their first sequence number
        commit.lock                    the writer commits under it; readers snapshot under it
        writer.lock                    held by the one listener writing (its pid inside)
        quarantine/                    damaged tails moved aside at start, never read as events
      tokens.json                      hashed webhook tokens: `vero-webhook token` writes
      tokens.lock                      held by `vero-webhook token` while it rewrites tokens.json
      tokens-last-used.json            when each token was last used: the listener writes
      rejects/                         refused requests: the listener writes, `report` reads
        2026-11-30.jsonl               one file per UTC day
      tap.lock                         held by a tap run, so two runs never read at once

The spool's own entries are named in spool/local.py; everything at the top here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataDir:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens.json"

    @property
    def tokens_lock(self) -> Path:
        return self.root / "tokens.lock"

    @property
    def tokens_last_used(self) -> Path:
        return self.root / "tokens-last-used.json"

    @property
    def rejects(self) -> Path:
        return self.root / "rejects"

    @property
    def tap_lock(self) -> Path:
        return self.root / "tap.lock"
