"""The bad-input tables' machinery: a case, the inputs it breaks, and the four checks every case passes.

Every bad input must end with (1) a non-zero exit status, (2) a last stderr line that names the culprit,
(3) no traceback anywhere on stderr, and (4) no new file in the test's directory (outputs, staging
directories, partial files). The `medmoelora` subcommands run in-process (`medmoelora.cli.main`);
``lm_eval`` and ``snakemake`` run as subprocesses, because what they print for an uncaught exception
is decided by the interpreter at exit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RAW_FIXTURES = REPO / "tests" / "data" / "fixtures" / "raw"
GGUF_MAGIC = b"GGUF" + (3).to_bytes(4, "little")  # magic and version 3, as a real file starts


@dataclass(frozen=True)
class Case:
    """One bad input: how to run it (from the inputs it breaks) and a regex the last stderr line must match."""

    id: str
    argv: Callable[[Any], Any]  # Inputs -> command line for the medmoelora CLI; each surface's own elsewhere
    culprit: str


class Inputs:
    """Makes the broken inputs of a case under ``root/inputs``; outputs go to ``root/out``."""

    def __init__(self, root: Path, tiny_model: Path, prepared_data: Path) -> None:
        self.root, self.tiny_model, self.prepared_data = root, tiny_model, prepared_data
        self.dir = root / "inputs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.out = root / "out"

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def model(self, name: str, breaks: Callable[[Path], object] = lambda directory: None) -> Path:
        """A copy of the tiny model directory, broken by ``breaks``."""
        directory = self.dir / name
        shutil.copytree(self.tiny_model, directory)
        breaks(directory)
        return directory

    def raw(self, breaks: Callable[[Path], object]) -> Path:
        """A copy of the raw release fixtures, broken by ``breaks``."""
        directory = self.dir / "raw"
        shutil.copytree(RAW_FIXTURES, directory)
        breaks(directory)
        return directory

    def gguf(self, name: str, body: bytes) -> Path:
        return self.file(name, GGUF_MAGIC + body)


# ---- ways to break a file -------------------------------------------------------------------------------
def truncate(path: Path, keep: float = 0.5) -> None:
    os.truncate(path, int(path.stat().st_size * keep))


def overwrite(path: Path, content: str | bytes) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


# ---- the four checks ------------------------------------------------------------------------------------------
def snapshot(root: Path, ignore: tuple[str, ...] = ()) -> set[str]:
    """Every path under ``root`` (files and directories), relative; top-level names in ``ignore`` skipped."""
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.relative_to(root).parts[0] not in ignore}


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_one_line_failure(case: Case, status: object, stderr: str, before: set[str], after: set[str]) -> None:
    assert status not in (0, None), f"{case.id}: exit status {status!r}\n{stderr}"
    assert "Traceback" not in stderr, f"{case.id}: traceback on stderr\n{stderr}"
    last = last_line(stderr)
    assert re.search(case.culprit, last), f"{case.id}: the last line does not name {case.culprit!r}:\n{last}"
    assert after == before, f"{case.id}: left behind {sorted(after - before)}, removed {sorted(before - after)}"
