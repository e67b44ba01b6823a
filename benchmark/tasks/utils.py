"""Reads the prepared jsonl for every ``medmoe_*`` task (``custom_dataset`` in ``_medmoe_template_yaml``).

lm-eval calls ``custom_dataset(**metadata, **dataset_kwargs)``: ``dataset_kwargs`` name the files, and
the task metadata (plus ``lm_eval --metadata '{...}'``) may carry ``data_dir``. The data directory is,
first found: that ``data_dir``, ``$MEDMOE_DATA_DIR``, ``data/processed`` (relative to the current
directory, like the workflow's outputs).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import datasets

from medmoelora.errors import UserError
from medmoelora_eval.errors import one_line_user_errors

DATA_DIR_ENV = "MEDMOE_DATA_DIR"
DEFAULT_DATA_DIR = "data/processed"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The prepared-data directory: ``data_dir``, else ``$MEDMOE_DATA_DIR``, else ``data/processed``."""
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser().resolve()


@lru_cache(maxsize=8)
def _read_jsonl(path: Path, mtime_ns: int, size: int) -> tuple[dict[str, Any], ...]:
    # Keyed by mtime and size so a re-prepared file is re-read; cached because the 57 MMLU
    # subtasks all read mmlu/test.jsonl and mmlu/dev.jsonl.
    with path.open(encoding="utf-8") as handle:
        return tuple(json.loads(line) for line in handle if line.strip())


def read_split(data_dir: Path, data_task: str, split: str) -> tuple[dict[str, Any], ...]:
    """The records of ``<data_dir>/<data_task>/<split>.jsonl``; a missing file says how to make it."""
    path = data_dir / data_task / f"{split}.jsonl"
    if not path.is_file():
        raise UserError(
            f"prepared data file {path} not found: run `medmoelora prepare-data` first, or point "
            f"${DATA_DIR_ENV} (or lm_eval --metadata '{{\"data_dir\": ...}}') at the prepared data"
        )
    stat = path.stat()
    return _read_jsonl(path, stat.st_mtime_ns, stat.st_size)


@one_line_user_errors()  # lm-eval builds datasets outside any code of ours: an uncaught error prints one line
def load_prepared(
    data_task: str,
    splits: Sequence[str],
    subject: str | None = None,
    data_dir: str | None = None,
    **_metadata: Any,
) -> datasets.DatasetDict:
    """The named splits of one prepared task as a DatasetDict, restricted to ``subject`` if given.

    ``_metadata`` swallows the task metadata lm-eval passes along (version, task_id, ...).
    """
    root = resolve_data_dir(data_dir)
    dataset = {}
    for split in splits:
        records = read_split(root, data_task, split)
        if subject is not None:
            records = tuple(record for record in records if record.get("subject") == subject)
            if not records:
                raise UserError(
                    f"no records with subject {subject!r} in {root / data_task / f'{split}.jsonl'}: "
                    "re-run `medmoelora prepare-data`"
                )
        dataset[split] = datasets.Dataset.from_list(list(records))
    return datasets.DatasetDict(dataset)
