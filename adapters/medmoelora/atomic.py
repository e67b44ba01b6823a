"""Writing outputs so that a crash, a full disk or an error never leaves a partial file or directory.

A file is written to a temporary sibling (same directory, so the final rename is atomic on POSIX) and
renamed over the target; a directory is built in a staging sibling and swapped in, the old one removed
only once the new one is in place. On any failure the temporary is removed and the target is left as
it was. Outputs are made readable by everyone (0644 files, 0755 directories), as on a shared cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_with(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` fills a temporary sibling of ``path``, which then replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.chmod(0o644)  # mkstemp's 0600 would hide the output from the other users of a cluster
        os.replace(tmp, path)
    except OSError as error:  # a full disk, a lost permission: name the file, not its temporary
        tmp.unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    return write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any, **dumps: Any) -> Path:
    """``json.dumps(data, **dumps)`` and a final newline; the text is built before anything is written."""
    return write_text(path, json.dumps(data, **dumps) + "\n")


@contextmanager
def replace_directory(out: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory beside ``out``; when the block succeeds it becomes ``out``.

    An existing ``out`` is moved aside, the staging directory renamed to ``out``, and the old one removed
    (put back if the rename fails). An error inside the block removes the staging directory and leaves
    ``out`` untouched; deciding whether ``out`` may be replaced at all is the caller's job.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would become OUT's mode
        yield staging
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_in(staging: Path, out: Path) -> None:
    if not out.exists():
        staging.rename(out)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    old = retired / "old"
    out.rename(old)
    try:
        staging.rename(out)
    except BaseException:
        old.rename(out)  # put the earlier good output back
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)
