"""Run the Snakemake workflow from tests: a scratch copy of the workflow files, the project's .venv on PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RAW_DATA = REPO.parent / "shared" / "data" / "raw"  # ../shared/data/raw, as config/*.yaml name it
GOLDEN = Path(__file__).parent / "golden"
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "benchmark/tasks", "results/paper")
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def workflow_copy(root: Path) -> Path:
    """The files the workflow reads, copied under ``root`` (results, logs and models land there too)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source, target = REPO / name, root / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return root


def snakemake(workdir: Path, *args: str, raw_data: Path | None = RAW_DATA, timeout: int = 600):
    """``snakemake ARGS`` in ``workdir`` with $MEDMOE_RAW_DATA set (unset when ``raw_data`` is None)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PATH"] = f"{SNAKEMAKE.parent}{os.pathsep}{env.get('PATH', '')}"  # medmoelora, lm_eval, accelerate
    env.pop("MEDMOE_RAW_DATA", None)
    if raw_data is not None:
        env["MEDMOE_RAW_DATA"] = str(raw_data)
    return subprocess.run(
        [str(SNAKEMAKE), *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )
