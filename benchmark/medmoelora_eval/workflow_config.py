"""The workflow config, checked when Snakemake starts: every mistake as one line, before any job runs.

Snakemake's own `validate` reports a schema violation as a dump of the whole schema (up to 500 lines),
and a bad adapter or training value would only fail inside a training job ("job failed, see log").
`check_config` instead raises a `UserError` with one line:

- the JSON Schema (``workflow/schemas/config.schema.yaml``): an unknown key with the nearest known one
  ("did you mean"), any other violation with the key's path, jsonschema's message and the key's
  description;
- the ``adapter:`` and ``training:`` sections, shared and per run, through the adapter package's own
  dataclasses (`AdapterConfig`, `TrainConfig`), the one definition of those fields, so that the
  workflow accepts exactly what ``medmoelora train`` accepts;
- the model spec's form (``medmoelora materialize-model``), without loading anything;
- the task names against the task registry (`medmoelora.tasks`): ``eval.limits`` names every task one
  lm_eval call runs, ``data.general_task`` is a general task or none, and a general training task (the
  general-domain instructions included) is prepared only when ``data.general_task`` names it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from medmoelora.errors import ConfigError, UserError
from medmoelora.tasks import DATA_TASKS, GENERAL_TRAINING_CHOICES, TRAINING_TASKS, check_limits

MAX_MESSAGE = 240  # characters of jsonschema's message: it repeats the offending value, which may be large


def check_config(config: Mapping[str, Any]) -> None:
    """After the schema: a one-line `UserError` for the first problem of the task names, the runs or the
    model spec."""
    check_task_names(config)
    check_runs(config)
    check_model_spec(config["model"]["spec"])


# ---- the JSON Schema ----------------------------------------------------------------------------------------
def schema_problem(config: Mapping[str, Any], schema_path: str | Path) -> str | None:
    """The most useful schema violation as one line (None if there is none): unknown keys first (a
    misspelling also shows as a missing required key, which says less), else jsonschema's best match."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    schema = yaml.safe_load(Path(schema_path).read_text(encoding="utf-8"))
    errors = list(Draft202012Validator(schema).iter_errors(config))
    if not errors:
        return None
    for error in errors:
        if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
            known = list(error.schema.get("properties", {}))
            unexpected = [key for key in error.instance if key not in known]
            if unexpected:
                return unknown_key(_path(error.absolute_path), str(unexpected[0]), known)
    error = best_match(errors)
    where = _path(error.absolute_path) or "(top level)"
    message = " ".join(error.message.split())
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    if error.validator == "enum":
        close = difflib.get_close_matches(str(error.instance), [str(v) for v in error.validator_value], n=1)
        message += f"; did you mean {close[0]!r}?" if close else ""
    description = error.schema.get("description") if isinstance(error.schema, Mapping) else None
    if error.validator == "required":
        description = None  # the schema of the enclosing object: its description is not the missing key's
    hint = f" ({' '.join(str(description).split())})" if description else ""
    return f"config key `{where}`: {message}{hint}"


def unknown_key(parent: str, key: str, known: Iterable[str]) -> str:
    known = sorted(known)
    full = f"{parent}.{key}" if parent else key
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean `{parent + '.' if parent else ''}{close[0]}`?" if close else ""
    return f"config key `{full}` is unknown{hint} (known here: {', '.join(known)})"


def _path(parts: Iterable[Any]) -> str:
    return ".".join(str(part) for part in parts)


# ---- task names: the registry's ------------------------------------------------------------------------------
def check_task_names(config: Mapping[str, Any]) -> None:
    check_limits(config["eval"]["limits"], where="config key `eval.limits`")
    general_task = config["data"]["general_task"]
    if general_task not in GENERAL_TRAINING_CHOICES:
        close = difflib.get_close_matches(str(general_task), GENERAL_TRAINING_CHOICES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(
            f"config key `data.general_task` = {general_task!r} is not one of {', '.join(GENERAL_TRAINING_CHOICES)}"
            f"{hint}"
        )


# ---- adapter and training sections: the dataclasses' own validation ------------------------------------------
def check_runs(config: Mapping[str, Any]) -> None:
    """Every run's adapter and training settings as `medmoelora train` will build them."""
    from medmoelora.config import AdapterConfig
    from medmoelora.training.config import TrainConfig, build_run_config
    from medmoelora.validation import field_hints

    shared = {"adapter": config.get("adapter") or {}, "training": config.get("training") or {}}
    fields = {"adapter": field_hints(AdapterConfig), "training": field_hints(TrainConfig)}
    for section, values in shared.items():
        _check_keys(section, values, fields[section])
    for name, run in config["runs"].items():
        own = {section: run.get(section) or {} for section in shared}
        for section, values in own.items():
            _check_keys(f"runs.{name}.{section}", values, fields[section])
        merged = {section: {**shared[section], **own[section]} for section in shared}
        try:
            settings = build_run_config(run["method"], merged)
        except ConfigError as error:
            raise UserError(_located(error, name, run, own, shared)) from None
        except UserError as error:
            raise UserError(f"config runs.{name} (method {run['method']}): {error}") from None
        _check_prepared_tasks(name, settings.training.tasks, config["data"]["general_task"])


def _check_keys(where: str, values: Any, known: Iterable[str]) -> None:
    if not isinstance(values, Mapping):
        raise UserError(f"config key `{where}` must be a mapping of field: value, not {values!r}")
    for key in values:
        if key not in known:
            raise UserError(unknown_key(where, str(key), known))


def _located(error: ConfigError, name: str, run: Mapping[str, Any], own: dict, shared: dict) -> str:
    """A dataclass's field error, with the config key the value came from (the run's, shared, or the preset)."""
    # TrainConfig's fields are named `training.<field>`, AdapterConfig's bare (`top_k`, `expert_schedule.kind`).
    section = "training" if error.field.startswith("training.") else "adapter"
    key = error.field.removeprefix("training.")
    top = key.split(".")[0]
    if top in own[section]:
        where = f"runs.{name}.{section}.{key}"
    elif top in shared[section]:
        where = f"{section}.{key}"
    else:
        where = f"runs.{name}.{section}.{key} (preset {run['method']})"
    return f"config key `{where}` = {error.value!r} is invalid: {error.allowed}"


def _check_prepared_tasks(name: str, tasks: Iterable[str], general_task: str) -> None:
    """prepare-data writes the medical tasks' train splits, and the general task's only when it is named."""
    for task in tasks:
        medical_default = task in TRAINING_TASKS and DATA_TASKS[task].domain == "medical"
        if not medical_default and task != general_task:
            raise UserError(
                f"config runs.{name}: training.tasks includes {task!r}, but prepare-data writes {task}/train only "
                f"with data.general_task: {task} (here {general_task}); change one of them"
            )


# ---- the base model --------------------------------------------------------------------------------------------
def check_model_spec(spec: str) -> None:
    """The model spec's form (tiny, an alias, pypi:..., an existing .gguf or directory, a Hub id)."""
    from medmoelora.base_models import check_spec

    try:
        check_spec(spec)
    except UserError as error:
        raise UserError(f"config key `model.spec`: {error}") from None
