"""A regular install works without the source tree: build the sdist, build the wheel from it (as
`python -m build` does), install that wheel into a fresh virtual environment, and from outside the
repository run every `medmoelora` subcommand, resolve `lm_eval --model medmoelora`, find the task
YAMLs and run them with lm-eval.

The fresh environment sees the dependencies (torch, transformers, lm-eval, ...) of the environment
running the tests through a path file, which only extends sys.path: the editable install of this
checkout lives there too, but its import hook is a .pth of its own that Python runs only for site
directories, so the environment imports medmoelora from the wheel alone (checked, not assumed).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from medmoelora.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
RAW_FIXTURES = REPO / "tests" / "data" / "fixtures" / "raw"
# What a build never reads: environments, VCS data and workflow outputs at the top, caches anywhere.
NOT_SOURCE_TOP = {".venv", ".git", ".snakemake", "results", "data", "resources", "logs", "build", "dist"}
CACHES = shutil.ignore_patterns("*.egg-info", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache")
PACKAGES = {"medmoelora": REPO / "adapters" / "medmoelora", "medmoelora_eval": REPO / "benchmark" / "medmoelora_eval"}
TASKS = REPO / "benchmark" / "tasks"

pytestmark = pytest.mark.slow


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def not_source(directory: str, names: list[str]) -> set[str]:
    ignored = set(CACHES(directory, names))
    return ignored | (NOT_SOURCE_TOP & set(names)) if Path(directory) == REPO else ignored


def source_files(root: Path) -> set[str]:
    return {
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("build")
    source = work / "source"
    shutil.copytree(REPO, source, ignore=not_source)
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    # setuptools' PEP 517 hooks, as `python -m build --no-isolation` calls them: the sdist first.
    sdist = run(
        [sys.executable, "-c", f"from setuptools import build_meta; print(build_meta.build_sdist({str(work)!r}))"],
        cwd=source,
        env=env,
    ).stdout.split()[-1]
    wheels = work / "wheels"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), work / sdist],
        cwd=work,
        env=env,
    )
    (built,) = wheels.glob("medmoelora-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict[str, Path]:
    """A fresh environment with the wheel installed; returns its python, its scripts and a neutral cwd."""
    root = tmp_path_factory.mktemp("venv")
    environment = root / "env"
    run([sys.executable, "-m", "venv", "--without-pip", str(environment)], cwd=root, env=dict(os.environ))
    python = environment / "bin" / "python"
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        cwd=root,
        env=dict(os.environ),
    )
    where = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, clean_env())
    purelib = Path(where.stdout.strip())
    dependencies = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    (purelib / "zz_test_dependencies.pth").write_text("\n".join(dict.fromkeys(dependencies)) + "\n")
    cwd = root / "elsewhere"
    cwd.mkdir()
    return {"python": python, "bin": environment / "bin", "purelib": purelib.resolve(), "cwd": cwd}


def clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


def test_the_wheel_holds_every_module_and_every_task_file(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for package, folder in PACKAGES.items():
        expected = {f"{package}/{name}" for name in source_files(folder) if name.endswith(".py")}
        assert expected <= names, sorted(expected - names)
    expected_tasks = {f"medmoelora_eval/tasks/{name}" for name in source_files(TASKS)}
    assert expected_tasks <= names, sorted(expected_tasks - names)
    assert "medmoelora_eval.pth" in names


def test_the_installed_copy_imports_from_the_wheel_not_the_checkout(installed):
    code = "import medmoelora, medmoelora_eval, medmoelora.training.run; print(medmoelora.training.run.__file__)"
    found = run([str(installed["python"]), "-c", code], installed["cwd"], clean_env()).stdout.strip()
    assert Path(found).resolve().is_relative_to(installed["purelib"]), found


def test_every_subcommand_runs_from_the_installed_copy(installed):
    medmoelora = str(installed["bin"] / "medmoelora")
    assert "usage: medmoelora" in run([medmoelora, "--help"], installed["cwd"], clean_env()).stdout
    (subcommands,) = [action.choices for action in build_parser()._actions if getattr(action, "choices", None)]
    assert {"train", "prepare-data"} <= set(subcommands)
    for name in subcommands:
        shown = run([medmoelora, name, "--help"], installed["cwd"], clean_env()).stdout
        assert f"usage: medmoelora {name}" in shown


def test_lm_eval_resolves_model_medmoelora_to_the_installed_copy(installed):
    code = (
        "import inspect; from lm_eval.api.registry import get_model; "
        "print(inspect.getfile(get_model('medmoelora'))); print(get_model('hf').__name__)"
    )
    where, builtin = run([str(installed["python"]), "-c", code], installed["cwd"], clean_env()).stdout.split()
    assert Path(where).resolve().is_relative_to(installed["purelib"]), where
    assert builtin == "HFLM"  # registering ours kept lm-eval's own models


def test_lm_eval_finds_and_runs_the_installed_task_yamls(installed, tmp_path):
    python = str(installed["python"])
    tasks = run([python, "-m", "medmoelora_eval.tasks_path"], installed["cwd"], clean_env()).stdout.strip()
    assert Path(tasks).resolve().is_relative_to(installed["purelib"]), tasks
    data = tmp_path / "processed"
    prepare = [str(installed["bin"] / "medmoelora"), "prepare-data", "--raw-dir", str(RAW_FIXTURES), "--out", str(data)]
    run([*prepare, "--pubmedqa-validation", "1", "--general-validation", "2"], installed["cwd"], clean_env())
    command = [python, "-m", "lm_eval", "--model", "dummy", "--include_path", tasks, "--limit", "2"]
    command += ["--tasks", "medmoe_medqa,medmoe_pubmedqa", "--output_path", str(tmp_path / "out")]
    run(command, installed["cwd"], clean_env(MEDMOE_DATA_DIR=str(data)))
    (results_file,) = (tmp_path / "out").glob("*/results_*.json")
    results = json.loads(results_file.read_text())
    assert {"medmoe_medqa", "medmoe_pubmedqa"} <= set(results["results"])
