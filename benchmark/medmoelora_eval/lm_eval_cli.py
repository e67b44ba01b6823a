"""lm-eval's own command line, with its task index limited to ``--include_path``: what the workflow's
evaluation jobs run.

    python -m medmoelora_eval.lm_eval_cli --model medmoelora --model_args pretrained=...,adapter=... \\
        --include_path benchmark/tasks --tasks TASKS --output_path results/lm_eval

It takes the arguments of ``lm_eval run`` and runs lm-eval's own entry point (`cli_evaluate`): the same
argument checks, evaluation, output files and printed tables. The one difference: before it looks up a task,
the stock CLI indexes every task lm-eval ships (about 14,000 YAML files: 6 s of each evaluation job on 2
cores, a seventh of an adapter's evaluation in ``make table1``). The suite's tasks live under
``--include_path`` and include none of those, so here lm-eval's `TaskManager` indexes the include path
alone (its own ``include_defaults=False``). A built-in task name is therefore unknown here; evaluate those
with ``lm_eval`` itself.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import lm_eval.tasks
from lm_eval.__main__ import cli_evaluate

from medmoelora.errors import UserError, command_main
from medmoelora.tasks import EVAL_TASKS

TASKS_NOT_FOUND = "Tasks not found"  # the start of lm-eval's message for an unknown --tasks name
SUITE_TASKS = [task.lm_eval_task for task in EVAL_TASKS.values()]


class IncludedTasksOnly(lm_eval.tasks.TaskManager):
    """lm-eval's TaskManager over ``include_path`` alone, unless a caller asks for the built-in tasks."""

    def __init__(self, *args: object, include_defaults: bool = False, **kwargs: object) -> None:
        super().__init__(*args, include_defaults=include_defaults, **kwargs)


@contextmanager
def included_tasks_only() -> Iterator[None]:
    """Inside the block, every TaskManager that lm-eval's CLI builds indexes ``--include_path`` alone. The CLI
    looks the class up in `lm_eval.tasks` when it builds one, so swapping that attribute is enough."""
    stock = lm_eval.tasks.TaskManager
    lm_eval.tasks.TaskManager = IncludedTasksOnly
    try:
        yield
    finally:
        lm_eval.tasks.TaskManager = stock


@command_main
def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not any(arg == "--include_path" or arg.startswith("--include_path=") for arg in arguments):
        raise UserError(
            "medmoelora_eval.lm_eval_cli indexes only --include_path's tasks and got none; "
            "add --include_path benchmark/tasks, or run `lm_eval` itself for lm-eval's built-in tasks"
        )
    saved_argv = sys.argv
    sys.argv = ["lm_eval", *arguments]
    try:
        with included_tasks_only():
            cli_evaluate()
    except ValueError as error:  # lm-eval's own check of --tasks, raised as a bare ValueError
        if not str(error).startswith(TASKS_NOT_FOUND):
            raise
        raise UserError(
            f"--tasks: {error} under --include_path; the suite's tasks are {', '.join(SUITE_TASKS)} "
            "(`lm_eval ... --tasks list` lists them), or run `lm_eval` itself for lm-eval's built-in tasks"
        ) from None
    finally:
        sys.argv = saved_argv
    return 0


if __name__ == "__main__":
    sys.exit(main())
