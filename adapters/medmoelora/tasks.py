"""Every task of the suite, defined once: what is prepared, trained on, evaluated and tabulated.

Two kinds of task:

- a `DataTask` is a prepared dataset, ``<data>/<name>/<split>.jsonl``, whose records carry the task's
  name as ``task_id`` and its domain; it owns its prompt (`medmoelora.data.prompts`, shared by
  training and the lm-eval tasks) and names the record fields the contamination check compares;
- an `EvalTask` is one score of the tables: the lm-eval task or group that produces it (a YAML under
  ``benchmark/tasks``), the metric key in lm-eval's results, its domain (medical scores make the
  medical average; general ones measure forgetting), its MMLU subjects if it is a subject group, and
  the training task whose expert answers it under Multi-LoRA routing.

prepare-data, the prompts, the training mixture, the Multi-LoRA preset, the ``medmoelora`` lm-eval
model type's routing, result parsing, the tables and the Snakemake workflow all read these
definitions; no other module spells a task name (a test runs git grep for them). A new evaluation task
is one `EvalTask` entry here plus its YAML; for a group of MMLU subjects
``benchmark/tasks/medmoe_mmlu/_generate_configs.py`` writes the YAML from the entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from medmoelora.data import prompts
from medmoelora.data.prompts import TaskPrompt
from medmoelora.errors import UserError, unknown_name

Domain = Literal["medical", "general"]
EVAL_SPLIT = "test"  # the split every evaluation task scores


@dataclass(frozen=True)
class DataTask:
    """A prepared dataset: ``<data>/<name>/<split>.jsonl``, records with ``task_id = name``."""

    name: str
    domain: Domain  # the records' domain label (MMLU's medical subjects are medical: `record_domain`)
    prompt: TaskPrompt  # record -> (prompt, completion), for training and lm-eval alike
    question_field: str  # the field holding the question text: the contamination check compares it
    default_training: bool  # in the default training mixture (and a Multi-LoRA expert of the preset)
    # An instruction's input: compared with the question (joined by a newline) and on its own, so that an
    # evaluation question pasted as the input of an instruction is caught.
    context_field: str | None = None
    trainable: bool = True  # prepare-data writes a train split that `medmoelora train` may read


def _data_task(
    name: str,
    domain: Domain,
    *,
    question_field: str,
    default_training: bool,
    context_field: str | None = None,
    trainable: bool = True,
    **prompt: Any,
) -> DataTask:
    """A data task whose `TaskPrompt` is built from ``prompt`` (doc_to_text, doc_to_target, choices, ...)."""
    return DataTask(
        name, domain, TaskPrompt(name, **prompt), question_field, default_training, context_field, trainable
    )


MEDQA = _data_task(
    "medqa",
    "medical",
    question_field="sent1",
    default_training=True,
    doc_to_text=prompts.medqa_doc_to_text,
    doc_to_target=prompts.medqa_doc_to_target,
    choices=prompts.LETTERS,
)
MEDMCQA = _data_task(  # training only: rendered in MedQA's prompt, so that it teaches that prompt
    "medmcqa",
    "medical",
    question_field="question",
    default_training=True,
    doc_to_text=prompts.medmcqa_doc_to_text,
    doc_to_target=prompts.medmcqa_doc_to_target,
    choices=prompts.LETTERS,
)
PUBMEDQA = _data_task(
    "pubmedqa",
    "medical",
    question_field="QUESTION",
    default_training=True,
    doc_to_text=prompts.pubmedqa_doc_to_text,
    doc_to_target=prompts.pubmedqa_doc_to_target,
    choices=prompts.PUBMEDQA_CHOICES,
)
# The general-domain training set for knowledge preservation: instructions with reference responses
# (AlpacaEval's 805 offline, Alpaca's 52k from the Hub) in the Alpaca template, from a source that no
# forgetting probe uses (GSM8K and MMLU are probes: training on them would measure in-domain
# fine-tuning, not preservation). Multi-LoRA's general expert is trained on it.
GENERAL_INSTRUCT = _data_task(
    "general_instruct",
    "general",
    question_field="instruction",
    context_field="input",
    default_training=True,
    doc_to_text=prompts.instruction_doc_to_text,
    doc_to_target=prompts.instruction_doc_to_target,
    # stanford_alpaca's train.py appends the response to "### Response:" directly; a newline between
    # them keeps the response's first token the start of a line. The loss falls on the response only.
    target_delimiter="\n",
)
GSM8K = _data_task(  # generation: no choices; a forgetting probe, trained on only if asked for
    "gsm8k",
    "general",
    question_field="question",
    default_training=False,
    doc_to_text=prompts.gsm8k_doc_to_text,
    doc_to_target=prompts.gsm8k_doc_to_target,
)
MMLU = _data_task(  # evaluation only: its dev split holds the few-shot examples
    "mmlu",
    "general",
    question_field="question",
    default_training=False,
    trainable=False,
    doc_to_text=prompts.mmlu_doc_to_text,
    doc_to_target=prompts.mmlu_doc_to_target,
    choices=prompts.LETTERS,
    description=lambda doc: prompts.mmlu_description(doc["subject"]),
)
# The general language-modelling probe: Alpaca's 175 human-written seed tasks, each a document of plain
# text scored by its rolling loglikelihood (no prompt: `doc_to_text` is empty).
GENERAL_LM = _data_task(
    "general_lm",
    "general",
    question_field="instruction",
    context_field="input",
    default_training=False,
    trainable=False,
    doc_to_text=lambda doc: "",
    doc_to_target=prompts.instruction_plain_text,
)
DATA_TASKS: dict[str, DataTask] = {
    task.name: task for task in (MEDQA, MEDMCQA, PUBMEDQA, GENERAL_INSTRUCT, GSM8K, MMLU, GENERAL_LM)
}
TRAINING_TASKS = tuple(name for name, task in DATA_TASKS.items() if task.default_training)
"""The default training mixture, and the experts (in this order) of the Multi-LoRA preset."""

# The 57 subjects of lm-eval's built-in mmlu (lm_eval/tasks/mmlu/_generate_configs.py), in its order.
MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics", "econometrics",
    "electrical_engineering", "elementary_mathematics", "formal_logic", "global_facts",
    "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics",
    "high_school_physics", "high_school_psychology", "high_school_statistics",
    "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality",
    "international_law", "jurisprudence", "logical_fallacies", "machine_learning", "management",
    "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations", "security_studies",
    "sociology", "us_foreign_policy", "virology", "world_religions",
)  # fmt: skip
# The paper's medical MMLU subset (the medical average of its tables).
MMLU_MEDICAL_SUBJECTS = (
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
)
MMLU_SUBJECT_TASK_PREFIX = "medmoe_mmlu_"  # lm-eval task of one subject: medmoe_mmlu_<subject>


def mmlu_subject_task(subject: str) -> str:
    """The lm-eval task of one MMLU subject (``benchmark/tasks/medmoe_mmlu/<it>.yaml``)."""
    return f"{MMLU_SUBJECT_TASK_PREFIX}{subject}"


def record_domain(task: DataTask, subject: str | None = None) -> Domain:
    """A record's domain: its task's, except that MMLU's medical subjects are medical."""
    return "medical" if subject in MMLU_MEDICAL_SUBJECTS else task.domain


@dataclass(frozen=True)
class EvalTask:
    """One score: ``results/eval/<run>/<name>.json`` and a column of the tables."""

    name: str
    label: str  # column heading in the tables
    lm_eval_task: str  # lm-eval task or group (benchmark/tasks)
    metric: str  # key of the score in lm-eval's results entry: "<metric>,<filter>"
    domain: Domain  # medical: part of the medical average; general: a forgetting probe
    data_task: DataTask  # whose <data>/<task>/test.jsonl holds the documents
    routing_task: DataTask  # whose expert answers the task under Multi-LoRA routing (preset eval_task_map)
    subjects: tuple[str, ...] = ()  # a group of MMLU subject tasks (its size-weighted mean); () = one task
    # Scored from another task's lm_eval run, from the results of its subjects: lm_eval refuses two
    # groups that share subtasks in one call, so a subject subset cannot be run beside the whole group.
    part_of: str | None = None
    percent: bool = True  # the metric is a fraction, shown in percent; False: shown as it is (bits per byte)
    higher_is_better: bool = True  # False for a loss such as bits per byte: forgetting then raises the score
    # More keys of lm-eval's results entry kept in <task>.json's `metrics` beside `metric`: the continuous
    # metrics of a multiple-choice task (medmoelora_eval.choice_metrics), the probe's perplexities.
    extra_metrics: tuple[str, ...] = ()
    in_tables: bool = True  # a column of the tables (MMLU's all 57 subjects mix the medical ones in: not)


# Beside accuracy, from the same requests: the gold answer's log-probability over the choices and the
# Brier score (benchmark/medmoelora_eval/choice_metrics.py, through the task YAMLs' process_results).
CHOICE_METRICS = ("gold_logprob,none", "brier,none")


EVAL_MEDQA = EvalTask(
    "medqa", "MedQA", "medmoe_medqa", "acc,none", "medical", MEDQA, MEDQA, extra_metrics=CHOICE_METRICS
)
EVAL_PUBMEDQA = EvalTask(
    "pubmedqa", "PubMedQA", "medmoe_pubmedqa", "acc,none", "medical", PUBMEDQA, PUBMEDQA, extra_metrics=CHOICE_METRICS
)
# strict-match: lm-eval's headline filter for GSM8K (the "#### <number>" line). The general probes are
# answered by Multi-LoRA's general expert.
EVAL_GSM8K = EvalTask(
    "gsm8k",
    "GSM8K",
    "medmoe_gsm8k",
    "exact_match,strict-match",
    "general",
    GSM8K,
    GENERAL_INSTRUCT,
    extra_metrics=("exact_match,flexible-extract",),
)
EVAL_MMLU = EvalTask(
    "mmlu",
    "MMLU",
    "medmoe_mmlu",
    "acc,none",
    "general",
    MMLU,
    GENERAL_INSTRUCT,
    subjects=MMLU_SUBJECTS,
    extra_metrics=CHOICE_METRICS,
    in_tables=False,
)
EVAL_MMLU_MEDICAL = EvalTask(
    "mmlu_medical",
    "MMLU-medical",
    "medmoe_mmlu_medical",
    "acc,none",
    "medical",
    MMLU,
    MEDQA,
    subjects=MMLU_MEDICAL_SUBJECTS,
    part_of=EVAL_MMLU.name,
    extra_metrics=CHOICE_METRICS,
)
# MMLU's forgetting probe: the subjects outside medicine (all of MMLU would mix the medical ones in).
EVAL_MMLU_GENERAL = EvalTask(
    "mmlu_general",
    "MMLU-general",
    "medmoe_mmlu_general",
    "acc,none",
    "general",
    MMLU,
    GENERAL_INSTRUCT,
    subjects=tuple(subject for subject in MMLU_SUBJECTS if subject not in MMLU_MEDICAL_SUBJECTS),
    part_of=EVAL_MMLU.name,
    extra_metrics=CHOICE_METRICS,
)
# The general LM probe in bits per byte (lower is better): forgetting shows even where GSM8K accuracy is 0.
EVAL_GENERAL_LM = EvalTask(
    "general_lm",
    "General LM bits/byte",
    "medmoe_general_lm",
    "bits_per_byte,none",
    "general",
    GENERAL_LM,
    GENERAL_INSTRUCT,
    percent=False,
    higher_is_better=False,
    extra_metrics=("byte_perplexity,none", "word_perplexity,none"),
)
EVAL_TASKS: dict[str, EvalTask] = {
    task.name: task
    for task in (
        EVAL_MEDQA,
        EVAL_PUBMEDQA,
        EVAL_GSM8K,
        EVAL_MMLU,
        EVAL_MMLU_MEDICAL,
        EVAL_MMLU_GENERAL,
        EVAL_GENERAL_LM,
    )
}
"""Every score, in the order of the tables' columns."""

RUN_TASKS = tuple(task for task in EVAL_TASKS.values() if task.part_of is None)
"""The tasks one lm_eval call runs (``--tasks``); their names key the per-task document limits."""

DEFAULT_EVAL_TASK_MAP = {task.lm_eval_task: task.routing_task.name for task in EVAL_TASKS.values()}
"""lm-eval task -> training task, the Multi-LoRA preset's ``eval_task_map``."""

GENERAL_TRAINING_CHOICES = (GENERAL_INSTRUCT.name, "none")
"""prepare-data's ``--general-task``: the general-domain training set for knowledge preservation."""
DEFAULT_GENERAL_TRAINING = GENERAL_INSTRUCT.name


def groups_over(lm_eval_task: str) -> list[str]:
    """The groups (lm-eval names) whose subjects include this subject task, most specific first."""
    if not lm_eval_task.startswith(MMLU_SUBJECT_TASK_PREFIX):
        return []
    subject = lm_eval_task.removeprefix(MMLU_SUBJECT_TASK_PREFIX)
    containing = [task for task in EVAL_TASKS.values() if subject in task.subjects]
    return [task.lm_eval_task for task in sorted(containing, key=lambda task: len(task.subjects))]


def data_task(name: str) -> DataTask:
    """The data task of a record's ``task_id``; an unknown one lists the valid ones."""
    try:
        return DATA_TASKS[name]
    except KeyError:
        raise unknown_name("task id", name, DATA_TASKS) from None


def get_prompt(task_id: str) -> TaskPrompt:
    """The prompt of a task id (records carry it in ``task_id``)."""
    return data_task(task_id).prompt


def check_limits(limits: Mapping[str, object], where: str = "--limits") -> None:
    """Per-task document limits must name every task an lm_eval call runs, and nothing else; a subject
    subset of one (``part_of``: mmlu_medical, mmlu_general) may override its parent's per-subject limit."""
    names = [task.name for task in RUN_TASKS]
    subsets = [task.name for task in EVAL_TASKS.values() if task.part_of is not None]
    for name in limits:
        if name not in names and name not in subsets:
            raise unknown_name(f"task in {where}", str(name), [*names, *subsets])
    missing = [name for name in names if name not in limits]
    if missing:
        raise UserError(f"{where} has no limit for {', '.join(missing)}; give one per task (null: every document)")


def subject_limit_task(subject: str, limits: Mapping[str, object]) -> str | None:
    """The subject subset whose limit applies to an MMLU subject (None: its group's limit applies)."""
    for task in EVAL_TASKS.values():
        if task.part_of is not None and subject in task.subjects and task.name in limits:
            return task.name
    return None
