"""Build step that ships ``medmoelora_eval.pth`` into site-packages (see `medmoelora_eval.lm_eval_hook`),
and the lm-eval task YAMLs into a regular wheel (see `medmoelora_eval.tasks_path`).

pyproject.toml names it as setuptools' ``build_py``:

    [tool.setuptools.cmdclass]
    build_py = "medmoelora_eval.build.BuildPyWithPth"

A file at the root of a wheel lands in site-packages, where Python runs a .pth file's ``import`` line
at start-up. A regular wheel is made from ``build_lib``, so the file goes there. An editable wheel
(``pip install -e .``, PEP 660) ignores ``build_lib`` and packs its unpacked-wheel directory, which
setuptools hands to the build as the ``install`` command's ``install_lib``; so the file goes there.

The task YAMLs live in ``benchmark/tasks``, beside the package rather than in it, so that
``--include_path benchmark/tasks`` works from a checkout; package data cannot reach outside a package's
folder, so this step copies the tree into the regular wheel as ``medmoelora_eval/tasks``. An editable
install needs no copy: it reads them in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools.command.build_py import build_py

PTH_NAME = "medmoelora_eval.pth"
PTH_SOURCE = Path(__file__).resolve().with_name(PTH_NAME)
TASKS_SOURCE = Path(__file__).resolve().parents[1] / "tasks"  # benchmark/tasks
TASKS_PACKAGED = "tasks"  # medmoelora_eval/tasks in an installed copy; keep in step with tasks_path.py


class BuildPyWithPth(build_py):
    """setuptools' ``build_py``, plus the .pth at the root of the wheel and the task YAMLs in the package."""

    def run(self) -> None:
        super().run()
        self.copy_file(str(PTH_SOURCE), str(self._pth_target()))
        if not getattr(self, "editable_mode", False):
            target = Path(self.build_lib) / "medmoelora_eval" / TASKS_PACKAGED
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(TASKS_SOURCE, target, ignore=ignore, dirs_exist_ok=True)

    def _pth_target(self) -> Path:
        if getattr(self, "editable_mode", False):
            return Path(self.get_finalized_command("install").install_lib) / PTH_NAME
        return Path(self.build_lib) / PTH_NAME
