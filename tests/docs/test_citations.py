"""The project documents its own contracts: nothing it ships cites a file outside the repository or an
issue tracker's numbers."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Assembled here so that this file does not match itself.
OUTSIDE_FILES = ("ARCHITECTURE" + ".md", "DEVELOPERS" + ".md", "STYLE" + ".md")
ISSUE_NUMBER = r"[Ii]ssues? ?#?[0-9]+\b"


def git_grep(*args: str) -> list[str]:
    result = subprocess.run(
        ["git", "grep", "-n", "--untracked", *args], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode in (0, 1), result.stderr  # 1: no match
    return result.stdout.splitlines()


def test_no_file_cites_notes_outside_the_repository() -> None:
    assert git_grep("-F", *(arg for name in OUTSIDE_FILES for arg in ("-e", name))) == []


def test_no_comment_cites_an_issue_number() -> None:
    assert git_grep("-E", ISSUE_NUMBER) == []
