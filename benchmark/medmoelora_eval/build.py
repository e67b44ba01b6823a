"""Build step that ships ``medmoelora_eval.pth`` into site-packages (see `medmoelora_eval.lm_eval_hook`).

pyproject.toml names it as setuptools' ``build_py``:

    [tool.setuptools.cmdclass]
    build_py = "medmoelora_eval.build.BuildPyWithPth"

A file at the root of a wheel lands in site-packages, where Python runs a .pth file's ``import`` line
at start-up. A regular wheel is made from ``build_lib``, so the file goes there. An editable wheel
(``pip install -e .``, PEP 660) ignores ``build_lib`` and packs its unpacked-wheel directory, which
setuptools hands to the build as the ``install`` command's ``install_lib``; so the file goes there.
"""

from __future__ import annotations

from pathlib import Path

from setuptools.command.build_py import build_py

PTH_NAME = "medmoelora_eval.pth"
PTH_SOURCE = Path(__file__).resolve().with_name(PTH_NAME)


class BuildPyWithPth(build_py):
    """setuptools' ``build_py``, plus the .pth at the root of the wheel."""

    def run(self) -> None:
        super().run()
        self.copy_file(str(PTH_SOURCE), str(self._pth_target()))

    def _pth_target(self) -> Path:
        if getattr(self, "editable_mode", False):
            return Path(self.get_finalized_command("install").install_lib) / PTH_NAME
        return Path(self.build_lib) / PTH_NAME
