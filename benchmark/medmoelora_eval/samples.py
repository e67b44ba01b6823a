"""Per-document evaluation results: loading them, and the per-document values each metric is made of.

Layout read (one JSON object per evaluated document, written by the eval step)::

    results/eval/<run>/<task>.samples.jsonl              a run without seeds (the base model, one seed)
    results/eval/<run>/seed<k>/<task>.samples.jsonl      one directory per training seed k

Every record has ``task`` (the lm-eval task: an MMLU record's is its subject's), ``doc_id`` and ``correct``;
multiple-choice records add ``gold`` and ``loglikelihoods`` (one per choice), rolling-loglikelihood
records ``loglikelihood`` and ``bytes``. A document is identified by (lm-eval task, doc_id) within a
task file; a run's seeds, and the runs compared, must hold the same documents.

Metrics are ratios of per-document sums (numerator / denominator), so that a mean and bits per byte
share one estimator (see `medmoelora_eval.stats`):

- ``accuracy``: 100 x correct (percent).
- ``gold_logprob``: log-probability of the gold choice among the choices, ``log softmax(loglikelihoods)[gold]``
  (nats; higher is better). Normalised over the choices so that it is a probability the model assigns to
  the right answer, not a length-dependent string likelihood.
- ``brier``: ``sum_j (p_j - [j = gold])^2`` with ``p = softmax(loglikelihoods)`` (0 best, 2 worst).
- ``bits_per_byte``: numerator ``-loglikelihood / ln 2``, denominator the document's bytes (lower is better).

Scopes: one task file (an evaluation task of the registry, `medmoelora.tasks`), ``medical_average``
(its medical tasks: MedQA, PubMedQA, MMLU-medical, each task counting once) and ``mmlu_general`` (MMLU's
non-medical subjects: the ``mmlu_general`` file when the eval wrote one, else the MMLU file less the
medical subjects).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import log_softmax

from medmoelora.errors import UserError
from medmoelora.tasks import EVAL_MMLU, EVAL_MMLU_GENERAL, EVAL_TASKS, MMLU_MEDICAL_SUBJECTS, mmlu_subject_task

SUFFIX = ".samples.jsonl"
SEED_DIRECTORY = re.compile(r"seed(\d+)")
REQUIRED_FIELDS = ("task", "doc_id", "correct")
OPTIONAL_FIELDS = ("gold", "loglikelihoods", "loglikelihood", "bytes")
COLUMNS = ("run", "seed", "file", *REQUIRED_FIELDS, *OPTIONAL_FIELDS)
UNSEEDED = 0  # the seed label of a run evaluated without seed directories


def load_samples(eval_dir: Path, runs: Iterable[str], seeds: Iterable[int] | None = None) -> pd.DataFrame:
    """Every per-document record of ``runs``: one row per (run, seed, task file, document).

    Columns: run, seed (k of ``seed<k>``; 0 for a run without seed directories), file (our task name,
    from the file name: medqa, mmlu_medical, ...), task (lm-eval's), doc_id, correct, gold,
    loglikelihoods, loglikelihood, bytes (missing fields are null). ``seeds``: read only these seed
    directories of a run that has them (a stale ``seed<k>/`` of an earlier config is left out), and
    require every one of them.
    """
    frames = []
    for run in dict.fromkeys(runs):
        for seed, path in _sample_files(eval_dir, run, None if seeds is None else list(seeds)):
            frame = _read_records(path).assign(run=run, seed=seed, file=path.name.removesuffix(SUFFIX))
            frames.append(frame)
    return pd.concat(frames, ignore_index=True).reindex(columns=list(COLUMNS))


def _sample_files(eval_dir: Path, run: str, seeds: list[int] | None = None) -> list[tuple[int, Path]]:
    run_dir = eval_dir / run
    if not run_dir.is_dir():
        raise UserError(f"no evaluation results for run {run!r}: {run_dir} does not exist; evaluate the run first")
    flat = sorted(run_dir.glob(f"*{SUFFIX}"))
    seeded = sorted(
        (int(match.group(1)), path)
        for child in run_dir.iterdir()
        if child.is_dir() and (match := SEED_DIRECTORY.fullmatch(child.name))
        for path in child.glob(f"*{SUFFIX}")
    )
    if flat and seeded:
        raise UserError(
            f"{run_dir} holds per-document results both directly and in seed<k>/ directories; "
            "remove the stale ones (results of one layout only)"
        )
    if seeds is not None and seeded:
        missing = sorted(set(seeds) - {seed for seed, _ in seeded})
        if missing:
            raise UserError(f"no per-document results under {run_dir}/seed{missing[0]}; evaluate that seed first")
        seeded = [(seed, path) for seed, path in seeded if seed in seeds]
    found = [(UNSEEDED, path) for path in flat] or seeded
    if not found:
        raise UserError(
            f"no per-document results (*{SUFFIX}) under {run_dir}; re-run its evaluation with per-document output"
        )
    tasks = {seed: {path.name for s, path in found if s == seed} for seed, _ in found}
    every = set().union(*tasks.values())
    for seed, names in tasks.items():
        if names != every:
            missing = ", ".join(sorted(every - names))
            raise UserError(f"{run_dir}/seed{seed} lacks {missing} that other seeds have; evaluate that seed fully")
    return found


def _read_records(path: Path) -> pd.DataFrame:
    records = []
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): JSON text may hold U+2028
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}; re-run the evaluation") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{number}: not a JSON object ({error.msg}); re-run the evaluation") from None
        if not isinstance(record, dict) or any(field not in record for field in REQUIRED_FIELDS):
            raise UserError(f"{path}:{number}: a per-document record needs {', '.join(REQUIRED_FIELDS)}")
        records.append(record)
    if not records:
        raise UserError(f"{path} holds no documents; re-run the evaluation")
    frame = pd.DataFrame.from_records(records)
    duplicated = frame.duplicated(["task", "doc_id"])
    if duplicated.any():
        first = frame[duplicated].iloc[0]
        raise UserError(f"{path}: document {first['task']}/{first['doc_id']} appears twice; re-run the evaluation")
    return frame


@dataclass(frozen=True)
class Stratum:
    """One run's per-document values on one task: the score is ``numerator.sum() / denominator.sum()``.

    Rows are the run's seeds, columns its documents (``documents`` names them, for pairing runs).
    """

    name: str
    numerator: np.ndarray  # (S, D)
    denominator: np.ndarray  # (S, D)
    documents: tuple = ()

    @property
    def seeds(self) -> int:
        return self.numerator.shape[0]


@dataclass(frozen=True)
class Metric:
    """A per-document (numerator, denominator) pair whose ratio of sums is the score."""

    name: str
    label: str
    higher_is_better: bool
    needs: tuple[str, ...]
    values: Callable[[pd.DataFrame], tuple[np.ndarray, np.ndarray]]


def _choice_log_probs(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(documents, max choices) log-probabilities over each document's choices (padding: -inf), and gold."""
    choices = [np.asarray(values, dtype=float) for values in rows["loglikelihoods"]]
    padded = np.full((len(choices), max(map(len, choices))), -np.inf)  # (D, K)
    for row, values in enumerate(choices):
        padded[row, : len(values)] = values
    return log_softmax(padded, axis=1), rows["gold"].to_numpy(dtype=int)


def _gold_logprob(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    log_probs, gold = _choice_log_probs(rows)
    return log_probs[np.arange(len(gold)), gold], np.ones(len(gold))


def _brier(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    log_probs, gold = _choice_log_probs(rows)
    target = np.zeros_like(log_probs)
    target[np.arange(len(gold)), gold] = 1.0
    return ((np.exp(log_probs) - target) ** 2).sum(axis=1), np.ones(len(gold))  # padding: (0 - 0)^2


METRICS: dict[str, Metric] = {
    "accuracy": Metric(
        "accuracy",
        "accuracy (points)",
        True,
        ("correct",),
        lambda rows: (100.0 * rows["correct"].to_numpy(dtype=float), np.ones(len(rows))),
    ),
    "gold_logprob": Metric("gold_logprob", "gold log-prob (nats)", True, ("loglikelihoods", "gold"), _gold_logprob),
    "brier": Metric("brier", "Brier score", False, ("loglikelihoods", "gold"), _brier),
    "bits_per_byte": Metric(
        "bits_per_byte",
        "bits per byte",
        False,
        ("loglikelihood", "bytes"),
        lambda rows: (
            -rows["loglikelihood"].to_numpy(dtype=float) / math.log(2),
            rows["bytes"].to_numpy(dtype=float),
        ),
    ),
}

MEDICAL_AVERAGE = "medical_average"
MMLU_GENERAL = EVAL_MMLU_GENERAL.name  # results from before it was a task: the mmlu file less medicine
SCOPES: dict[str, tuple[str, ...]] = {
    MEDICAL_AVERAGE: tuple(name for name, task in EVAL_TASKS.items() if task.domain == "medical")
}
SCOPE_LABELS = {
    MEDICAL_AVERAGE: "Medical avg",
    **{name: task.label for name, task in EVAL_TASKS.items()},
}
_MEDICAL_SUBTASKS = {mmlu_subject_task(subject) for subject in MMLU_MEDICAL_SUBJECTS}


def scope_tasks(scope: str) -> tuple[str, ...]:
    """The task files a scope averages over (each counting once)."""
    return SCOPES.get(scope, (scope,))


def scope_label(scope: str) -> str:
    return SCOPE_LABELS.get(scope, scope)


def task_rows(samples: pd.DataFrame, task: str, run: str | None = None) -> pd.DataFrame:
    """Rows of one task file (of one run); ``mmlu_general`` falls back to the ``mmlu`` file less the
    medical subjects."""
    of_run = samples["run"].eq(run) if run is not None else True
    rows = samples[samples["file"].eq(task) & of_run]
    if rows.empty and task == MMLU_GENERAL:
        rows = samples[samples["file"].eq(EVAL_MMLU.name) & ~samples["task"].isin(_MEDICAL_SUBTASKS) & of_run]
    return rows


def has_metric(samples: pd.DataFrame, run: str, scope: str, metric: str) -> bool:
    """Whether every task of ``scope`` has documents of ``run`` carrying the fields ``metric`` needs."""
    for task in scope_tasks(scope):
        rows = task_rows(samples, task, run)
        if rows.empty or rows[list(METRICS[metric].needs)].isna().any(axis=None):
            return False
    return True


def available_scopes(samples: pd.DataFrame) -> list[str]:
    """The scopes this set of results can score: composite ones first, then each task file."""
    files = list(dict.fromkeys(samples["file"]))
    composite = [scope for scope, tasks in SCOPES.items() if set(tasks) <= set(files)]
    if EVAL_MMLU.name in files and MMLU_GENERAL not in files:
        composite.append(MMLU_GENERAL)
    return composite + files


def strata(samples: pd.DataFrame, run: str, scope: str, metric: str) -> list[Stratum]:
    """``run``'s per-document values of ``metric`` on ``scope``: one `Stratum` (seeds x documents) per task."""
    chosen = METRICS[metric]
    out = []
    for task in scope_tasks(scope):
        rows = task_rows(samples, task, run)
        if rows.empty:
            raise UserError(f"run {run!r} has no per-document results for {task}; evaluate it on {task}")
        missing = [field for field in chosen.needs if rows[field].isna().any()]
        if missing:
            raise UserError(f"{metric} needs {', '.join(missing)} in every {task} record of run {run!r}")
        numerator, denominator = chosen.values(rows)
        ordered = rows.assign(numerator=numerator, denominator=denominator).sort_values(["seed", "task", "doc_id"])
        seeds = ordered["seed"].nunique()
        shape = (seeds, len(ordered) // seeds)  # (S, D) when every seed holds the same documents
        keys = [ordered[column].to_numpy() for column in ("seed", "task", "doc_id")]
        if len(ordered) % seeds or not all((key.reshape(shape) == key.reshape(shape)[:1]).all() for key in keys[1:]):
            counts = ordered.groupby("seed").size().to_dict()
            raise UserError(
                f"the seeds of run {run!r} hold different {task} documents (documents per seed: {counts}); "
                "re-run their evaluations with the same documents"
            )
        out.append(
            Stratum(
                name=task,
                numerator=ordered["numerator"].to_numpy(dtype=float).reshape(shape),
                denominator=ordered["denominator"].to_numpy(dtype=float).reshape(shape),
                documents=tuple(zip(*(key.reshape(shape)[0] for key in keys[1:]), strict=True)),
            )
        )
    return out
