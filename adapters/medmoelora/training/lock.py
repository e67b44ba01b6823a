"""One training per output directory: an exclusive flock on ``<out>/.train.lock`` while a run writes there.

The kernel drops a flock when its process dies, so a lock file left by a killed run never blocks the
next one. The file is removed on release; acquiring checks that the locked file is still the one at
the path, so that a run racing with that removal cannot end up holding a lock on a deleted file.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medmoelora.errors import UserError

LOCK_FILE = ".train.lock"


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    path = out / LOCK_FILE
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise UserError(
                f"--out {out} is in use by another training run (it holds {path}); wait for it to finish "
                "or choose another --out"
            ) from None
        try:
            same_file = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(descriptor)  # the previous holder removed it between our open and our flock: retry
    try:
        yield
    finally:
        try:
            path.unlink(missing_ok=True)  # before unlocking, so no one else locks the file we remove
        finally:
            os.close(descriptor)
