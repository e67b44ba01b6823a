"""What a tiny-DAG run did, in numbers that move when the method changes: its fingerprint.

table1.csv rounds four to 57 documents into percentages, so two adapters that differ (aux losses off,
a frozen router, a fixed tau) can give the same table. The fingerprint keeps what the scores are made of:

- ``eval``: every document's loglikelihood per choice (multiple choice; mmlu_medical's and mmlu_general's
  documents are mmlu's), extracted answer (gsm8k) and loglikelihood per byte (the general LM probe:
  per byte, so that one tolerance fits documents of any length), from
  ``results/eval/<run>/<task>.samples.jsonl``;
- ``train`` (trained runs): per logged step the loss, its LM part, each aux loss, the gradient norm, the
  mean router temperature and the largest expert share (``train_log.csv``); ``final_loss``
  (``train_metrics.json``); each layer's mean gate per expert after training (``routing_stats.json``);
  each layer's mean learned tau (``adapter_model.safetensors``).

`compare` checks one fingerprint against another within `TOLERANCES` and lists every difference.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from medmoelora_eval.temperatures import read_temperatures

EVAL_TASKS = ("medqa", "pubmedqa", "gsm8k", "mmlu", "general_lm")  # mmlu_medical's and mmlu_general's are mmlu's
LOG_COLUMNS = ("loss", "lm_loss", "aux_balance", "aux_preservation", "aux_base_l2", "grad_norm")
LOG_COLUMNS += ("temperature_mean", "max_expert_share")

# Quantity -> (absolute, relative) tolerance: |a - b| <= absolute + relative * |golden|. Why each is what
# it is (measured variation below, mutations' changes above): test_workflow_tiny_dag.py's docstring.
TOLERANCES: dict[str, tuple[float, float]] = {
    "loglikelihood": (1e-4, 0.0),  # nats, of about -11
    "log": (1e-7, 1e-5),  # per step: loss, lm_loss, aux losses, grad norm, mean tau, largest expert share
    "final_loss": (0.0, 1e-5),
    "routing": (1e-6, 0.0),  # mean gate of an expert in a layer (a share, 0-1)
    "tau": (1e-5, 0.0),  # learned router temperature, layer mean (about 1)
}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def eval_fingerprint(eval_dir: Path) -> dict[str, Any]:
    """``{"<lm-eval task>/<doc id>": [loglikelihood per choice], extracted answer or loglikelihood per
    byte}`` of one run."""
    found: dict[str, Any] = {}
    for task in EVAL_TASKS:
        for doc in read_jsonl(eval_dir / f"{task}.samples.jsonl"):
            if "loglikelihoods" in doc:
                outcome = doc["loglikelihoods"]
            elif "loglikelihood" in doc:
                outcome = doc["loglikelihood"] / doc["bytes"]
            else:
                outcome = doc["answer"]
            found[f"{doc['task']}/{doc['doc_id']}"] = outcome
    return found


def train_fingerprint(train_dir: Path) -> dict[str, Any]:
    """Losses per step, final loss, routing shares and learned tau per layer of one trained run."""
    with (train_dir / "train_log.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    log = {
        column: [float(row[column]) for row in rows]
        for column in LOG_COLUMNS
        if rows and column in rows[0] and all(row[column] != "" for row in rows)
    }
    metrics = json.loads((train_dir / "train_metrics.json").read_text(encoding="utf-8"))
    stats = json.loads((train_dir / "routing_stats.json").read_text(encoding="utf-8"))
    routing = {layer: entry["mean_gate"] for layer, entry in stats["overall"]["layers"].items()}
    found: dict[str, Any] = {"log": log, "final_loss": metrics["final_loss"], "routing": routing}
    if any(entry["routing"] == "soft" for entry in stats["overall"]["modules"].values()):  # a router, a tau
        taus = read_temperatures(train_dir / "adapter_model.safetensors").groupby("layer")["tau"].mean()
        found["tau"] = {str(layer): float(tau) for layer, tau in taus.items()}
    return found


def fingerprint(workdir: Path, runs: list[str], base_run: str = "base", seed: int = 0) -> dict[str, Any]:
    """Every run's fingerprint in a workflow directory, of one training seed (``seed<k>/``); ``base_run``
    is evaluated once, not trained."""
    found: dict[str, Any] = {}
    for run in runs:
        seeded = Path(run) if run == base_run else Path(run, f"seed{seed}")
        found[run] = {"eval": eval_fingerprint(workdir / "results" / "eval" / seeded)}
        if run != base_run:
            found[run]["train"] = train_fingerprint(workdir / "results" / "train" / seeded)
    return found


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"med_moe_lora/train/routing/3": [...], ...}``: one entry per leaf (a number, list or string)."""
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}/"))
        return flat
    return {prefix.rstrip("/"): tree}


def quantity(path: str) -> str:
    """The `TOLERANCES` key of a flattened path."""
    parts = path.split("/")
    if "eval" in parts:
        return "loglikelihood"
    return parts[parts.index("train") + 1] if "train" in parts else parts[0]


def compare(golden: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Every difference beyond `TOLERANCES`, one line each: missing or extra entries, other strings
    (answers), other lengths, numbers too far apart (with the largest difference of the entry)."""
    expected, found = flatten(golden), flatten(actual)
    problems = [f"{path}: missing" for path in expected if path not in found]
    problems += [f"{path}: not in the golden file" for path in found if path not in expected]
    for path in expected.keys() & found.keys():
        want, got = expected[path], found[path]
        if not isinstance(want, list | float | int) or isinstance(want, bool):
            if want != got:
                problems.append(f"{path}: {got!r}, golden {want!r}")
            continue
        wants, gots = (want, got) if isinstance(want, list) else ([want], [got])
        if not isinstance(gots, list) or len(wants) != len(gots):
            problems.append(f"{path}: {got!r}, golden {want!r}")
            continue
        absolute, relative = TOLERANCES[quantity(path)]
        worst = max(abs(g - w) - (absolute + relative * abs(w)) for w, g in zip(wants, gots, strict=True))
        if worst > 0 or any(math.isnan(g) for g in gots):
            deviation = max(abs(g - w) for w, g in zip(wants, gots, strict=True))
            problems.append(f"{path}: differs by {deviation:.3g} (tolerance {absolute:g} + {relative:g} * |golden|)")
    return sorted(problems)


def largest_deviations(golden: dict[str, Any], actual: dict[str, Any]) -> dict[str, float]:
    """Per quantity, the largest absolute difference between two fingerprints' shared numeric entries."""
    expected, found = flatten(golden), flatten(actual)
    largest: dict[str, float] = {}
    for path in expected.keys() & found.keys():
        wants, gots = expected[path], found[path]
        wants, gots = (wants, gots) if isinstance(wants, list) else ([wants], [gots])
        numbers = [(w, g) for w, g in zip(wants, gots, strict=False) if isinstance(w, float) and isinstance(g, float)]
        if numbers:
            key = quantity(path)
            largest[key] = max(largest.get(key, 0.0), *(abs(g - w) for w, g in numbers))
    return dict(sorted(largest.items()))
