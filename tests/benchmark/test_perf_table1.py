"""perf_table1 runs each revision's own code from git and compares the two table1.csv files."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
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


def gone_or_zombie(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status


def test_a_terminated_run_stops_the_whole_group_it_started(tmp_path):
    # a child that starts a grandchild of its own, as snakemake starts its jobs
    command = ["sh", "-c", f"sleep 60 & echo $! > {tmp_path / 'pid'}; wait"]
    previous = signal.signal(signal.SIGTERM, perf_table1.exit_on_sigterm)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        with pytest.raises(SystemExit) as stopped:
            perf_table1.run_whole_group(command, tmp_path, dict(os.environ), tmp_path / "log")
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.code == 128 + signal.SIGTERM
    grandchild = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 10
    while not gone_or_zombie(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone_or_zombie(grandchild)


@pytest.mark.skipif(not HAS_HISTORY, reason="needs the project's git history (a clone, not an sdist)")
def test_a_terminated_measurement_removes_its_scratch_trees_and_writes_nothing(tmp_path, monkeypatch):
    seen: list[Path] = []

    def terminated_after_the_first(tree: Path, config: str, cores: int, env: dict[str, str], log: Path) -> float:
        seen.append(tree)
        if len(seen) == 2:
            perf_table1.exit_on_sigterm(signal.SIGTERM, None)  # as the handler does when SIGTERM arrives
        write_table(tree / perf_table1.TABLE1, 20.0)
        return 100.0

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(perf_table1, "timed_table1", terminated_after_the_first)
    config, out = tmp_path / "config.yaml", tmp_path / "wall.csv"
    config.write_text("seeds: [0]\n")
    args = ["--before", "HEAD", "--config", str(config), "--out", str(out), "--raw-data", str(tmp_path)]
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit):
        perf_table1.main([*args, "--logs", str(tmp_path / "logs")])
    assert len(seen) == 2 and not any(tree.exists() for tree in seen) and not out.exists()
    assert signal.getsignal(signal.SIGTERM) == handler  # this process's own handler is back
