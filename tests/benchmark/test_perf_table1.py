"""perf_table1 runs each revision's own code from git and compares the two table1.csv files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from medmoelora_eval import perf_table1

REPO = Path(__file__).resolve().parents[2]
HAS_HISTORY = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).returncode == 0


def write_table(path: Path, acc: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"run": ["base", "lora"], "medical_avg": [34.4, acc]}).to_csv(path, index=False)


def test_tables_compare_byte_for_byte_and_report_the_largest_difference(tmp_path):
    write_table(tmp_path / "a.csv", 20.0)
    write_table(tmp_path / "b.csv", 20.0)
    write_table(tmp_path / "c.csv", 22.5)
    assert perf_table1.compare_tables(tmp_path / "a.csv", tmp_path / "b.csv") == (True, 0.0)
    assert perf_table1.compare_tables(tmp_path / "a.csv", tmp_path / "c.csv") == (False, 2.5)


@pytest.mark.skipif(not HAS_HISTORY, reason="needs the project's git history (a clone, not an sdist)")
def test_each_revision_runs_from_its_own_exported_tree(tmp_path, monkeypatch):
    seen: list[Path] = []

    def fake_table1(tree: Path, config: str, cores: int, env: dict[str, str], log: Path) -> float:
        # the real environment: this tree's packages are the ones imported (tree_environment checked it)
        assert env["PYTHONPATH"].split(":")[0] == str(tree / "adapters")
        assert (tree / config).is_file() and (tree / "Snakefile").is_file()
        seen.append(tree)
        write_table(tree / perf_table1.TABLE1, 20.0)
        return 100.0 if len(seen) == 1 else 40.0

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(perf_table1, "timed_table1", fake_table1)
    config, out = tmp_path / "config.yaml", tmp_path / "wall.csv"
    config.write_text("seeds: [0]\n")
    args = ["--before", "HEAD", "--config", str(config), "--out", str(out), "--raw-data", str(tmp_path)]
    assert perf_table1.main([*args, "--logs", str(tmp_path / "logs")]) == 0
    row = pd.read_csv(out).iloc[0]
    assert (row.before_s, row.after_s, row.after_over_before) == (100.0, 40.0, 0.4)
    assert bool(row.table1_unchanged) and row.table1_max_abs_diff == 0.0
    assert [tree.name for tree in seen] == ["before", "after"] and not seen[0].exists()  # scratch removed


def test_an_unknown_revision_is_one_line_and_no_output(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    config, out = tmp_path / "config.yaml", tmp_path / "wall.csv"
    config.write_text("seeds: [0]\n")
    args = ["--before", "no-such-revision", "--config", str(config), "--out", str(out), "--raw-data", str(tmp_path)]
    if HAS_HISTORY:
        assert perf_table1.main([*args, "--logs", str(tmp_path / "logs")]) == 2
        assert "no-such-revision" in capsys.readouterr().err and not out.exists()
    missing = ["--before", "HEAD", "--config", str(tmp_path / "none.yaml"), "--out", str(out)]
    assert perf_table1.main(missing) == 2
    assert "--config" in capsys.readouterr().err and not out.exists()
