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
from medmoelora_eval.claims import ROLES, resolve_roles
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
HELDOUT_START = "results/train/heldout_start.json"  # the base model's held-out losses, shared by every run
BASE_RUN = "base"  # the untouched base model, evaluated with lm_eval's stock `--model hf`
EVAL_NAMES = list(EVAL_TASKS)  # results/eval/<run>/<task>.json, every score of the task registry
LM_EVAL_TASKS = ",".join(task.lm_eval_task for task in RUN_TASKS)  # what one lm_eval call runs
SAMPLES = ".samples.jsonl"  # results/eval/<run>/<task>.samples.jsonl: per-document results
RUNS = config["runs"]
SEEDS = config["seeds"]  # every trained run once per seed: results/{train,eval}/<run>/seed<k>/
MAIN_RUNS = config["tables"]["main"]
ALLOCATION = config["tables"]["allocation"]
TEMPERATURE = config["tables"]["temperature"]
FORGETTING = config["tables"]["forgetting"]
TABLES = [f"results/table{number}.csv" for number in range(1, 6)]
FIGURES = [
    f"results/figures/{name}.png"
    for name in ("claims", "routing_heatmap", "forgetting", "temperature", "general_probe")
]


def _check_config() -> None:
    """What the JSON Schema cannot express: table entries must name defined runs."""
    if BASE_RUN in RUNS:
        sys.exit(f"error: config runs: {BASE_RUN!r} is reserved for the untouched base model; rename that run")
    seeded = ["training"] * ("seed" in config["training"])
    seeded += [f"runs.{name}.training" for name, run in RUNS.items() if "seed" in run.get("training", {})]
    if seeded:
        sys.exit(f"error: config {seeded[0]}.seed: the training seed comes from the top-level `seeds:` list; remove it")
    named = {
        "tables.main": MAIN_RUNS,
        "tables.forgetting": FORGETTING,
        "tables.allocation": list(ALLOCATION.values()),
        "tables.temperature": list(TEMPERATURE.values()),
        "figures.routing_run": [config["figures"]["routing_run"]],
        "figures.temperature_run": [config["figures"]["temperature_run"]],
        "claims.runs": [run for run in config.get("claims", {}).get("runs", {}).values() if run != BASE_RUN],
    }
    for key, runs in named.items():
        for run in runs:
            if run not in RUNS:
                sys.exit(f"error: config {key} names run {run!r}; defined runs: {', '.join(RUNS)}")


def claim_runs() -> dict[str, str]:
    """Claim role -> run: config claims.runs, else the run named like the role (the base model for `base`);
    alloc_asymmetric and tau_learnable default to the med_moe_lora run (medmoelora_eval.claims)."""
    named = {role: role for role in ROLES if role in RUNS} | {"base": BASE_RUN}
    try:
        return resolve_roles(named | config.get("claims", {}).get("runs", {}))
    except UserError as error:
        sys.exit(f"error: config claims.runs: {error}")


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
CLAIM_RUNS = claim_runs()
# The runs some table or claim reads, in config order: the report's training health covers these (a run
# defined only in a config that another extends, such as config.yaml's under tiny.yaml, is not trained).
REPORTED_RUNS = [
    name
    for name in RUNS
    if name in {*MAIN_RUNS, *ALLOCATION.values(), *TEMPERATURE.values(), *FORGETTING, *CLAIM_RUNS.values()}
]
RAW_DATA_DIR = raw_data_dir() if config["data"]["source"] == "raw" else None


def run_dirs(run: str) -> list[str]:
    """A run's directories under results/train and results/eval: <run>/seed<k> for every seed; the base
    model, which has no training seed, is evaluated once, in results/eval/base/."""
    return [BASE_RUN] if run == BASE_RUN else [f"{run}/seed{seed}" for seed in SEEDS]


wildcard_constraints:
    run="|".join(re.escape(name) for name in RUNS),
    seed="|".join(str(seed) for seed in SEEDS),
    # what one eval job evaluates: the base model, or one seed of a trained run
    model="|".join(re.escape(name) for run in [BASE_RUN, *RUNS] for name in run_dirs(run)),
    task="|".join(EVAL_NAMES),


def eval_files(runs, suffix=".json") -> list[str]:
    """Every task file of every seed of ``runs`` (suffix .samples.jsonl: the per-document results)."""
    return [f"results/eval/{name}/{task}{suffix}" for run in runs for name in run_dirs(run) for task in EVAL_NAMES]


def train_files(runs, name="train_metrics.json") -> list[str]:
    return [f"results/train/{seeded}/{name}" for run in runs for seeded in run_dirs(run)]


def seed_args() -> str:
    return " ".join(str(seed) for seed in SEEDS)


def row_args(rows) -> str:
    """`--rows label=run ...` for medmoelora_eval.tables: a list names itself, a mapping is label: run."""
    pairs = rows.items() if isinstance(rows, dict) else [(run, run) for run in rows]
    return " ".join(shlex.quote(f"{label}={run}") for label, run in pairs)


def get_train_overrides(wildcards) -> str:
    """The run's `--set section.key=value` options: config training (shared), then the run's own, and
    the seed of this job."""
    run = RUNS[wildcards.run]
    return set_args(
        {
            "adapter": {**config.get("adapter", {}), **run.get("adapter", {})},
            "training": {**config["training"], **run.get("training", {}), "seed": int(wildcards.seed)},
        }
    )


def set_args(sections) -> str:
    """`--set section.key=value` options, each value in JSON (which YAML reads back unchanged)."""
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
    if wildcards.model == BASE_RUN:
        return {"model": "hf", "model_args": args}
    return {"model": "medmoelora", "model_args": f"{args},adapter=results/train/{wildcards.model}"}


def get_eval_adapter(wildcards) -> list[str]:
    if wildcards.model == BASE_RUN:
        return []
    return [f"results/train/{wildcards.model}/{name}" for name in ("adapter_model.safetensors", "adapter_config.json")]


def compute(stage: str, key: str):
    return config["compute"][stage][key]


# ---- results/mechanisms (mechanisms.smk) ------------------------------------------------------------------
MECHANISM_RUN = CLAIM_RUNS.get("med_moe_lora")
ABLATION_SPECS = {"without_base": "base", "without_specialists": "specialists"}  # -> disable_experts=


def ablation_dir(input, ablation: str) -> str:
    """results/mechanisms/eval/<ablation>: the parent of that ablation's seed directories among ``input``."""
    for path in map(Path, input):
        if path.parent.parent.name == ablation and path.parent.name.startswith("seed"):
            return str(path.parent.parent)
    raise ValueError(f"no input under an ablation directory named {ablation!r}")


MECHANISM_FILES = ["ablation.csv", "dual_path.csv", "routing_specialisation.csv", "subspace_overlap.csv"]
MECHANISM_FILES += ["routing_by_depth.png", "subspace_by_depth.png"]
MECHANISMS = [f"results/mechanisms/{name}" for name in MECHANISM_FILES] if MECHANISM_RUN else []


def mechanism_run() -> str:
    if not MECHANISM_RUN:
        sys.exit("error: results/mechanisms needs a Med-MoE-LoRA run: define run med_moe_lora or set claims.runs")
    return MECHANISM_RUN


def get_ablation_model_args(wildcards) -> str:
    adapter = f"results/train/{mechanism_run()}/seed{wildcards.seed}"
    spec = ABLATION_SPECS[wildcards.ablation]
    return f"pretrained={MODEL_DIR},dtype={config['eval']['dtype']},adapter={adapter},disable_experts={spec}"


def get_ablation_adapter(wildcards) -> list[str]:
    return [
        f"results/train/{mechanism_run()}/seed{wildcards.seed}/{name}"
        for name in ("adapter_model.safetensors", "adapter_config.json")
    ]
