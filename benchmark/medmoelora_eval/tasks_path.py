"""Where the suite's lm-eval task YAMLs are: the folder to give ``lm_eval --include_path``.

    lm_eval --model medmoelora --model_args ... --tasks TASKS \\
        --include_path "$(python -m medmoelora_eval.tasks_path)"

From a checkout (or an editable install) that folder is ``benchmark/tasks``, so ``--include_path
benchmark/tasks`` from the repository root says the same. A regular install (``pip install .``, a wheel)
carries them inside the package as ``medmoelora_eval/tasks`` (copied there by `medmoelora_eval.build`).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Standard library only: this runs inside `$(...)` before every lm_eval call, and importing medmoelora
# would import torch. A missing folder is a broken install, not a user's input: FileNotFoundError.
PACKAGED = Path(__file__).resolve().parent / "tasks"  # a regular install
SOURCE_TREE = Path(__file__).resolve().parents[1] / "tasks"  # benchmark/tasks of a checkout
MARKER = "_medmoe_template_yaml"  # the shared template every task includes: ours, not another "tasks" folder


def tasks_dir() -> Path:
    """The folder of the ``medmoe_*`` task YAMLs of this copy of the suite."""
    for candidate in (PACKAGED, SOURCE_TREE):
        if (candidate / MARKER).is_file():
            return candidate
    raise FileNotFoundError(
        f"the medmoe_* task YAMLs are in neither {PACKAGED} nor {SOURCE_TREE}; reinstall medmoelora "
        "(pip install . from the repository) or pass --include_path benchmark/tasks from a checkout"
    )


def main() -> int:
    try:
        print(tasks_dir())
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
