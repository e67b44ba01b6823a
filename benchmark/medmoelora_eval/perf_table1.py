"""`make table1`'s wall time before and after the performance work, on one fixed config, and whether table1.csv moved.

    python -m medmoelora_eval.perf_table1 --before 3abc728 --after HEAD --config config/perf_table1.yaml \
        --out results/perf/table1_wall.csv

Each revision is exported from this repository's git history (``git archive``) into a temporary directory
and runs ``snakemake --cores N results/table1.csv --configfile <config>`` there from scratch (data, model,
training, evaluation, tables), one revision after the other on the same machine. Both use this Python
environment's packages, but their own code: ``PYTHONPATH`` puts the exported tree's ``adapters/`` and
``benchmark/`` ahead of the editable install, and the run stops if an import resolves elsewhere. Both run
the same config file (the one given, copied into each tree). The result: each revision's wall seconds,
their ratio, and whether the two table1.csv files are identical (with the largest numeric difference).
Stopped (Ctrl-C, or SIGTERM from Snakemake or a scheduler), it stops the snakemake it started together with
that snakemake's jobs, removes both scratch trees and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from medmoelora import atomic
from medmoelora.errors import UserError, command_main

RAW_DATA_ENV = "MEDMOE_RAW_DATA"  # the workflow's override of raw_data_dir (workflow/rules/common.smk)
TABLE1 = "results/table1.csv"


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"git {' '.join(args)} failed in {cwd}: {done.stderr.strip()}; run this from a git clone")
    return done.stdout.strip()


def export_tree(repo: Path, revision: str, into: Path) -> str:
    """Writes ``revision``'s files into ``into``; returns its short hash."""
    short = git("rev-parse", "--short", f"{revision}^{{commit}}", cwd=repo)
    into.mkdir(parents=True)
    archive = subprocess.Popen(["git", "archive", short], cwd=repo, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise UserError(f"git archive {short} failed")
    return short


def tree_environment(tree: Path, raw_data: Path) -> dict[str, str]:
    """This environment with ``tree``'s own packages first on the path (ahead of the editable install)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree / "adapters"), str(tree / "benchmark")])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env[RAW_DATA_ENV] = str(raw_data)
    env.setdefault("HF_HUB_OFFLINE", "1")
    probe = "import medmoelora, medmoelora_eval; print(medmoelora.__file__); print(medmoelora_eval.__file__)"
    found = subprocess.run([sys.executable, "-c", probe], cwd=tree, env=env, capture_output=True, text=True)
    files = found.stdout.split()
    if found.returncode != 0 or len(files) != 2 or not all(Path(f).resolve().is_relative_to(tree) for f in files):
        raise UserError(f"the packages of {tree} are not the ones imported there ({files or found.stderr.strip()})")
    return env


def run_whole_group(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> int:
    """Runs ``command`` in a process group of its own, output to ``log``; its exit code. If this process is
    interrupted or terminated meanwhile, the whole group (snakemake and the jobs it started) is terminated
    first, so that nothing keeps running in a scratch tree about to be removed."""
    with log.open("w", encoding="utf-8") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return process.wait()
        except BaseException:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            raise


def timed_table1(tree: Path, config: str, cores: int, env: dict[str, str], log: Path) -> float:
    """Runs the workflow's table1 target in ``tree``; its wall seconds."""
    command = ["snakemake", "--cores", str(cores), TABLE1, "--configfile", config]
    start = time.perf_counter()
    returncode = run_whole_group(command, tree, env, log)
    seconds = time.perf_counter() - start
    if returncode != 0:
        raise UserError(f"`{' '.join(command)}` failed in {tree} (exit {returncode}); see {log}")
    return seconds


def exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (Snakemake stopping this job, a cluster's time limit) as an exception, so that the scratch
    trees are removed on the way out rather than left in the temporary directory (about 600 MB)."""
    raise SystemExit(128 + signum)


def compare_tables(before: Path, after: Path) -> tuple[bool, float]:
    """Whether two table1.csv files are byte-identical, and their largest numeric difference."""
    same = before.read_bytes() == after.read_bytes()
    left, right = pd.read_csv(before), pd.read_csv(after)
    if list(left.columns) != list(right.columns) or len(left) != len(right):
        return False, float("nan")
    numeric = left.select_dtypes("number").columns
    return same, float((left[numeric] - right[numeric]).abs().max().max()) if len(numeric) else 0.0


def measure(repo: Path, before: str, after: str, config: Path, cores: int, raw_data: Path, logs: Path) -> dict:
    """Both revisions' make table1 in scratch trees, one after the other: perf_table1.csv's row."""
    row: dict[str, object] = {"config": str(config), "cores": cores}
    with tempfile.TemporaryDirectory(prefix="perf_table1_") as scratch:
        tables = {}
        for label, revision in (("before", before), ("after", after)):
            tree = Path(scratch) / label
            row[label] = export_tree(repo, revision, tree)
            shutil.copyfile(config, tree / "config" / "perf_table1.yaml")
            env = tree_environment(tree.resolve(), raw_data.resolve())
            print(f"{label} ({row[label]}): snakemake {TABLE1} in {tree} ...", flush=True)
            row[f"{label}_s"] = round(
                timed_table1(tree, "config/perf_table1.yaml", cores, env, logs / f"{label}.log"), 1
            )
            print(f"{label}: {row[f'{label}_s']} s", flush=True)
            tables[label] = tree / TABLE1
        row["after_over_before"] = round(float(row["after_s"]) / float(row["before_s"]), 3)
        row["table1_unchanged"], row["table1_max_abs_diff"] = compare_tables(tables["before"], tables["after"])
    return row


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision before the performance work")
    parser.add_argument("--after", default="HEAD", help="git revision after it (default HEAD)")
    parser.add_argument("--config", type=Path, required=True, help="workflow config both revisions run")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write: one row, both wall times")
    parser.add_argument("--cores", type=int, default=8, help="snakemake --cores (make table1 uses 8)")
    parser.add_argument("--raw-data", type=Path, help=f"raw data directory (default ${RAW_DATA_ENV} or the config's)")
    parser.add_argument("--logs", type=Path, default=Path("logs/perf_table1"), help="each revision's snakemake log")
    args = parser.parse_args(argv)
    repo = Path(git("rev-parse", "--show-toplevel", cwd=Path.cwd()))
    if not args.config.is_file():
        raise UserError(f"--config {args.config} not found; give a workflow config file")
    raw_data = args.raw_data or Path(os.environ.get(RAW_DATA_ENV) or repo.parent / "shared" / "data" / "raw")
    if not raw_data.is_dir():
        raise UserError(f"raw data directory {raw_data} not found; pass --raw-data or set ${RAW_DATA_ENV}")
    args.logs.mkdir(parents=True, exist_ok=True)
    previous_handler = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        row = measure(repo, args.before, args.after, args.config, args.cores, raw_data, args.logs)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    table = pd.DataFrame([row])
    atomic.write_text(args.out, table.to_csv(index=False))
    print(table.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
