# Config validation, names shared by the rules, wildcard constraints and the get_*(wildcards) input
# functions. Kept small: the work happens in the `medmoelora` and `lm_eval` command lines.
import json
import os
import re
import shlex
import sys
from pathlib import Path

from medmoelora.errors import UserError
from medmoelora.tasks import EVAL_TASKS, RUN_TASKS
from medmoelora_eval.workflow_config import check_config, schema_problem
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

SCHEMA = "../schemas/config.schema.yaml"


# Mistakes stop the workflow at start, one line each: Snakemake's validate() prints the whole schema
# (hundreds of lines) on a violation, so it is reported by schema_problem (the key's path, "did you
# mean" for a misspelt key); adapter and training values, checked by the dataclasses that
# `medmoelora train` builds, would otherwise fail only inside a training job.
try:
    validate(config, schema=SCHEMA)
    check_config(config)
except WorkflowError as error:
    schema = Path(workflow.current_basedir.get_path_or_uri(secret_free=True)) / SCHEMA
    sys.exit(f"error: {schema_problem(config, schema) or error}")
except UserError as error:
    sys.exit(f"error: {error}")

RAW_DATA_ENV = "MEDMOE_RAW_DATA"  # overrides config key raw_data_dir when set
DATA_DIR = "data/processed"
MODEL_DIR = f"resources/models/{config['model']['name']}"
BASE_RUN = "base"  # the untouched base model, evaluated with lm_eval's stock `--model hf`
EVAL_NAMES = list(EVAL_TASKS)  # results/eval/<run>/<task>.json, every score of the task registry
LM_EVAL_TASKS = ",".join(task.lm_eval_task for task in RUN_TASKS)  # what one lm_eval call runs
RUNS = config["runs"]
MAIN_RUNS = config["tables"]["main"]
ALLOCATION = config["tables"]["allocation"]
TEMPERATURE = config["tables"]["temperature"]
FORGETTING = config["tables"]["forgetting"]
TABLES = [f"results/table{number}.csv" for number in range(1, 6)]
FIGURES = [f"results/figures/{name}.png" for name in ("routing_heatmap", "forgetting", "temperature")]


def _check_config() -> None:
    """What the JSON Schema cannot express: table entries must name defined runs."""
    if BASE_RUN in RUNS:
        sys.exit(f"error: config runs: {BASE_RUN!r} is reserved for the untouched base model; rename that run")
    named = {
        "tables.main": MAIN_RUNS,
        "tables.forgetting": FORGETTING,
        "tables.allocation": list(ALLOCATION.values()),
        "tables.temperature": list(TEMPERATURE.values()),
        "figures.routing_run": [config["figures"]["routing_run"]],
        "figures.temperature_run": [config["figures"]["temperature_run"]],
    }
    for key, runs in named.items():
        for run in runs:
            if run not in RUNS:
                sys.exit(f"error: config {key} names run {run!r}; defined runs: {', '.join(RUNS)}")


def raw_data_dir() -> str:
    """$MEDMOE_RAW_DATA, else config raw_data_dir; a missing directory stops the workflow in one line."""
    path = os.environ.get(RAW_DATA_ENV) or config.get("raw_data_dir") or ""
    if not Path(path).is_dir():
        sys.exit(
            f"error: raw data directory {path!r} not found; set config key raw_data_dir "
            f"(--config raw_data_dir=DIR) or environment variable {RAW_DATA_ENV}"
        )
    return path


_check_config()
RAW_DATA_DIR = raw_data_dir() if config["data"]["source"] == "raw" else None


wildcard_constraints:
    run="|".join(re.escape(name) for name in [BASE_RUN, *RUNS]),
    task="|".join(EVAL_NAMES),


def eval_files(runs) -> list[str]:
    return [f"results/eval/{run}/{task}.json" for run in runs for task in EVAL_NAMES]


def train_files(runs, name="train_metrics.json") -> list[str]:
    return [f"results/train/{run}/{name}" for run in runs]


def row_args(rows) -> str:
    """`--rows label=run ...` for medmoelora_eval.tables: a list names itself, a mapping is label: run."""
    pairs = rows.items() if isinstance(rows, dict) else [(run, run) for run in rows]
    return " ".join(shlex.quote(f"{label}={run}") for label, run in pairs)


def get_train_overrides(wildcards) -> str:
    """The run's `--set section.key=value` options: config training (shared), then the run's own."""
    run = RUNS[wildcards.run]
    sections = {
        "adapter": {**config.get("adapter", {}), **run.get("adapter", {})},
        "training": {**config["training"], **run.get("training", {})},
    }
    return " ".join(
        f"--set {shlex.quote(f'{section}.{key}={json.dumps(value)}')}"
        for section, values in sections.items()
        for key, value in values.items()
    )


def get_train_launcher(wildcards) -> str:
    """`medmoelora` on one process; `accelerate launch --multi_gpu` when compute.train.processes > 1."""
    processes = config["compute"]["train"]["processes"]
    if processes == 1:
        return "medmoelora"
    return f"accelerate launch --multi_gpu --num_processes {processes} -m medmoelora.cli"


def get_eval_model(wildcards) -> dict[str, str]:
    """lm_eval's --model and --model_args: stock `hf` for the base model, `medmoelora` for an adapter."""
    args = f"pretrained={MODEL_DIR},dtype={config['eval']['dtype']}"
    if wildcards.run == BASE_RUN:
        return {"model": "hf", "model_args": args}
    return {"model": "medmoelora", "model_args": f"{args},adapter=results/train/{wildcards.run}"}


def get_eval_adapter(wildcards) -> list[str]:
    if wildcards.run == BASE_RUN:
        return []
    run = [wildcards.run]
    return train_files(run, "adapter_model.safetensors") + train_files(run, "adapter_config.json")


def compute(stage: str, key: str):
    return config["compute"][stage][key]
