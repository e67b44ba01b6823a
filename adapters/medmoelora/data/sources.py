"""Read the benchmark data, raw release files or Hugging Face Hub, into records of the shared schema.

Every record carries ``id``, ``task_id`` and ``domain`` plus the fields (names and types) of the Hub
dataset that lm-eval's built-in task reads, so that the suite's lm-eval tasks can use the built-in
prompts unchanged: medqa -> GBaker/MedQA-USMLE-4-options-hf, pubmedqa -> bigbio pubmed_qa source
schema, gsm8k -> openai/gsm8k, mmlu -> cais/mmlu, medmcqa -> openlifescienceai/medmcqa.
The general-domain data has no built-in lm-eval task: the instructions for knowledge preservation and
the general LM probe's documents use the field names of tatsu-lab/alpaca (``instruction``, ``input``,
``output``).
Every malformed input raises a one-line `UserError` naming the file (and line, for line formats).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmoelora.data.prompts import LETTERS, PUBMEDQA_CHOICES
from medmoelora.errors import UserError
from medmoelora.tasks import (
    GENERAL_INSTRUCT,
    GENERAL_LM,
    GSM8K,
    MEDMCQA,
    MEDQA,
    MMLU,
    MMLU_SUBJECTS,
    PUBMEDQA,
    DataTask,
    record_domain,
)

Record = dict[str, Any]

SCHEMA_VERSION = 1
# The raw release directory names of MMLU's splits -> the cais/mmlu split names lm-eval uses.
MMLU_SPLITS = {"dev": "dev", "val": "validation", "test": "test"}
# Official PubMedQA test labels, pinned to the commit recorded in shared/data/SOURCES.md; only needed
# with --from-hub, because the Hub's pqa_labeled has no test split.
PUBMEDQA_TEST_IDS_URL = (
    "https://raw.githubusercontent.com/pubmedqa/pubmedqa/"
    "1cbae8e92f72f20c8d3747cbb3bf5bc53554d997/data/test_ground_truth.json"
)
PUBMEDQA_TEST_IDS_SHA256 = "939fe566f09017d13b1ca64d2ddfee0bc2374b366048152997669cccedc44d51"
# The 175 human-written Alpaca seed tasks (the general LM probe), pinned likewise; the Hub has no copy.
ALPACA_SEED_TASKS_URL = (
    "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/"
    "761dc5bfbdeeffa89b8bff5d038781a4055f796a/seed_tasks.jsonl"
)
ALPACA_SEED_TASKS_SHA256 = "7779004fa198fdf27cf70a159363879d8a26c53329e11b436af17b3941875f48"


@dataclass
class Sources:
    """Everything read, before splitting: records per (task, source split) and provenance."""

    records: dict[tuple[str, str], list[Record]] = field(default_factory=dict)
    pubmedqa_test_ids: dict[str, str] = field(default_factory=dict)  # PMID -> official label
    files: list[dict[str, Any]] = field(default_factory=list)  # manifest provenance entries


class _Bad(Exception):
    """A field-level problem; the reader adds the file and line before it becomes a UserError."""


def _fail(
    where: str, problem: str, hint: str = "restore the original release file (shared/data/SOURCES.md)"
) -> UserError:
    return UserError(f"{where}: {problem}; {hint}")


def _str(row: dict, key: str, optional: bool = False) -> str | None:
    if key not in row:
        raise _Bad(f"missing field {key!r}")
    value = row[key]
    if value is None and optional:
        return None
    if not isinstance(value, str) or (not optional and not value.strip()):
        raise _Bad(f"field {key!r} must be a non-empty string, got {value!r}")
    return value


def _str_list(row: dict, key: str) -> list[str]:
    value = row.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"field {key!r} must be a list of strings")
    return list(value)


# --- converters: one source row -> one record of the shared schema ------------------------------


def _identity(record_id: str, task: DataTask) -> Record:
    """The fields every record starts with: its id, its task (the registry's name) and its domain."""
    return {"id": record_id, "task_id": task.name, "domain": task.domain}


def medqa_record(row: dict, record_id: str) -> Record:
    """MedQA US 4-option row (question, options{A..D}, answer_idx, answer) -> the -hf schema."""
    question = _str(row, "question")
    options = row.get("options")
    if not isinstance(options, dict) or sorted(options) != list(LETTERS):
        raise _Bad(f"field 'options' must map exactly A, B, C, D to strings, got {options!r}")
    answer_idx = row.get("answer_idx")
    if answer_idx not in LETTERS:
        raise _Bad(f"answer_idx {answer_idx!r} is not one of the options A-D")
    # The release stores the answer twice; a disagreement means an edited or corrupted file.
    if "answer" in row and row["answer"] != options[answer_idx]:
        raise _Bad(f"answer {row['answer']!r} differs from option {answer_idx}")
    endings = {f"ending{i}": _str(options, letter) for i, letter in enumerate(LETTERS)}
    return {
        **_identity(record_id, MEDQA),
        "sent1": question,
        **endings,
        "label": LETTERS.index(answer_idx),
    }


def pubmedqa_record(pmid: str, row: dict) -> Record:
    """ori_pqal.json entry -> bigbio pubmed_qa_labeled_fold0_source fields."""
    decision = row.get("final_decision")
    if decision not in PUBMEDQA_CHOICES:
        raise _Bad(f"final_decision {decision!r} is not one of yes, no, maybe")
    year = row.get("YEAR")
    if year is not None and not isinstance(year, str):
        raise _Bad(f"field 'YEAR' must be a string or null, got {year!r}")
    return {
        **_identity(f"pubmedqa-{pmid}", PUBMEDQA),
        "QUESTION": _str(row, "QUESTION"),
        "CONTEXTS": _str_list(row, "CONTEXTS"),
        "LABELS": _str_list(row, "LABELS"),
        "MESHES": _str_list(row, "MESHES"),
        "YEAR": year,
        "LONG_ANSWER": _str(row, "LONG_ANSWER"),
        "final_decision": decision,
    }


def gsm8k_record(row: dict, record_id: str) -> Record:
    """GSM8K row; the answer must keep its '#### N' line, which lm-eval's strict-match filter reads."""
    answer = _str(row, "answer")
    if "#### " not in answer:
        raise _Bad("field 'answer' has no final '#### <number>' line")
    return {
        **_identity(record_id, GSM8K),
        "question": _str(row, "question"),
        "answer": answer,
    }


def mmlu_record(question: str, choices: list[str], answer: int, subject: str, record_id: str) -> Record:
    """One MMLU item in cais/mmlu form; the domain follows the medical subjects."""
    return {
        **_identity(record_id, MMLU),
        "domain": record_domain(MMLU, subject),
        "question": question,
        "subject": subject,
        "choices": choices,
        "answer": answer,
    }


def medmcqa_record(row: dict, cop_base: int) -> Record:
    """MedMCQA row; ``cop_base`` is 1 for the raw release (1 = opa) and 0 for the Hub (ClassLabel)."""
    cop = row.get("cop")
    if not isinstance(cop, int) or isinstance(cop, bool) or not cop_base <= cop <= cop_base + 3:
        raise _Bad(f"cop {cop!r} is outside {cop_base}..{cop_base + 3} (this format is {cop_base}-indexed)")
    return {
        **_identity(f"medmcqa-{_str(row, 'id')}", MEDMCQA),
        "question": _str(row, "question"),
        **{key: _str(row, key) for key in ("opa", "opb", "opc", "opd")},
        "cop": cop - cop_base,
        "subject_name": _str(row, "subject_name", optional=True),
        "topic_name": _str(row, "topic_name", optional=True),
        "choice_type": _str(row, "choice_type"),
        "exp": row.get("exp") if isinstance(row.get("exp"), str) else None,
    }


def instruction_record(row: dict, record_id: str, task: DataTask) -> Record:
    """An instruction with its (optional) input and a reference response, in tatsu-lab/alpaca's fields:
    a general-domain training record, or a document of the general LM probe."""
    text_input = row.get("input", "")
    if not isinstance(text_input, str):
        raise _Bad(f"field 'input' must be a string, got {text_input!r}")
    return {
        **_identity(record_id, task),
        "instruction": _str(row, "instruction"),
        "input": text_input,
        "output": _str(row, "output"),
    }


def seed_task_records(row: dict, number: int = 0) -> list[Record]:
    """One Alpaca seed task (an instruction and its instances) -> one probe document per instance."""
    instances = row.get("instances")
    if not isinstance(instances, list) or not instances or not all(isinstance(i, dict) for i in instances):
        raise _Bad("field 'instances' must be a non-empty list of {input, output} objects")
    name = _str(row, "id")
    return [
        instruction_record({"instruction": row.get("instruction"), **instance}, f"{name}-{k}", GENERAL_LM)
        for k, instance in enumerate(instances)
    ]


# --- raw release files ----------------------------------------------------------------------------


def _provenance(path: Path, raw_dir: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {
        "path": path.relative_to(raw_dir).as_posix(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }


def _require(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"{path}: raw file not found; put the release file there or pass another --raw-dir")
    return path


def _text(path: Path) -> str:
    """The whole file as UTF-8 text; a bad byte fails with its line number."""
    data = _require(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise _fail(f"{path}:{line}", f"not UTF-8 ({error.reason} at byte {error.start})") from None


def _jsonl(path: Path, convert: Callable[[dict, int], Record | list[Record]]) -> list[Record]:
    """Convert each line of a JSON Lines file; errors name the file and 1-based line number."""
    return jsonl_records(_text(path), str(path), convert)


def jsonl_records(text: str, where: str, convert: Callable[[dict, int], Record | list[Record]]) -> list[Record]:
    """Convert each line of JSON Lines ``text`` (one record, or a list of them, per line)."""
    records: list[Record] = []
    # JSON Lines separates records by "\n" only (a JSON string may hold a raw U+2028).
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise _Bad("line is not a JSON object")
            converted = convert(row, number)
            records.extend(converted if isinstance(converted, list) else [converted])
        except json.JSONDecodeError as error:
            raise _fail(f"{where}:{number}", f"malformed JSON ({error.msg})") from None
        except _Bad as error:
            raise _fail(f"{where}:{number}", str(error)) from None
    if not records:
        raise _fail(where, "file has no records")
    return records


def _json(path: Path) -> dict:
    try:
        data = json.loads(_text(path))
    except json.JSONDecodeError as error:
        raise _fail(f"{path}:{error.lineno}", f"malformed JSON ({error.msg})") from None
    if not isinstance(data, dict) or not data:
        raise _fail(str(path), "expected a non-empty JSON object keyed by PMID")
    return data


def _mmlu_csv(path: Path, subject: str, split: str) -> list[Record]:
    """One headerless MMLU csv (question, A, B, C, D, answer letter); quoted fields may span lines."""
    records, start = [], 1
    reader = csv.reader(io.StringIO(_text(path), newline=""))
    try:
        for index, row in enumerate(reader):
            where = f"{path}:{start}"
            if len(row) != 6:
                raise _fail(where, f"expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
            if row[5].strip() not in LETTERS:
                raise _fail(where, f"answer {row[5]!r} is not one of the options A-D")
            record_id = f"mmlu-{split}-{subject}-{index:04d}"
            records.append(mmlu_record(row[0], row[1:5], LETTERS.index(row[5].strip()), subject, record_id))
            start = reader.line_num + 1
    except csv.Error as error:  # e.g. a quote left open at the end of the file
        raise _fail(f"{path}:{start}", f"malformed CSV ({error})") from None
    if not records:
        raise _fail(str(path), "file has no rows")
    return records


def read_mmlu(raw_dir: Path, sources: Sources, progress: Callable[[Iterator], Iterator]) -> None:
    """All MMLU subjects, sorted by name as in cais/mmlu 'all'; every subject needs all three splits."""
    subjects = sorted(p.name.removesuffix("_test.csv") for p in (raw_dir / "mmlu/test").glob("*_test.csv"))
    if not subjects:
        raise UserError(f"{raw_dir / 'mmlu/test'}: no <subject>_test.csv files; check --raw-dir")
    paths = [(raw_dir / f"mmlu/{d}/{s}_{d}.csv", s, d) for d in MMLU_SPLITS for s in subjects]
    for path, subject, raw_split in progress(paths):
        split = MMLU_SPLITS[raw_split]
        sources.records.setdefault((MMLU.name, split), []).extend(_mmlu_csv(_require(path), subject, split))
        sources.files.append(_provenance(path, raw_dir))
    if len(subjects) != len(MMLU_SUBJECTS):
        print(f"prepare-data: note: MMLU has {len(subjects)} subjects here, not {len(MMLU_SUBJECTS)}", file=sys.stderr)


def read_raw(raw_dir: Path, progress: Callable[[Iterator], Iterator] = iter) -> Sources:
    """Read the raw release files under ``raw_dir`` (layout of shared/data/SOURCES.md)."""
    if not raw_dir.is_dir():
        raise UserError(f"{raw_dir}: --raw-dir is not a directory")
    sources = Sources()

    def jsonl(rel: str, key: tuple[str, str], convert: Callable[[dict, int], Record | list[Record]]) -> None:
        sources.records[key] = _jsonl(raw_dir / rel, convert)
        sources.files.append(_provenance(raw_dir / rel, raw_dir))

    # Ids are the 0-based line index within the release file: stable as long as the file is.
    jsonl(
        "medqa/US/4_options/phrases_no_exclude_test.jsonl",
        (MEDQA.name, "test"),
        lambda row, n: medqa_record(row, f"medqa-test-{n - 1:05d}"),
    )
    jsonl(
        "medqa/dev/phrases_no_exclude_dev.jsonl",
        (MEDQA.name, "dev"),
        lambda row, n: medqa_record(row, f"medqa-dev-{n - 1:05d}"),
    )
    for split in ("train", "test"):
        jsonl(
            f"gsm8k/{split}.jsonl",
            (GSM8K.name, split),
            lambda row, n, s=split: gsm8k_record(row, f"gsm8k-{s}-{n - 1:05d}"),
        )
    # dev.json is JSON Lines despite its name; its cop is 1-indexed (checked: values 1..4, no 0).
    jsonl("medmcqa/dev.json", (MEDMCQA.name, "validation"), lambda row, n: medmcqa_record(row, cop_base=1))
    # General-domain instructions for knowledge preservation: AlpacaEval's 805 instructions with
    # text-davinci-003 responses (README, Data: why this set and not GSM8K or MMLU).
    jsonl(
        "alpaca_eval/alpaca_eval.jsonl",
        (GENERAL_INSTRUCT.name, "all"),
        lambda row, n: instruction_record(row, f"alpaca_eval-{n - 1:05d}", GENERAL_INSTRUCT),
    )
    # The general LM probe: Alpaca's 175 human-written seed tasks (no overlap with AlpacaEval).
    jsonl("alpaca/seed_tasks.jsonl", (GENERAL_LM.name, "test"), seed_task_records)

    pqal_path = raw_dir / "pubmedqa/ori_pqal.json"
    truth_path = raw_dir / "pubmedqa/test_ground_truth.json"
    pqal = _json(pqal_path)
    rows = []
    for pmid, row in pqal.items():
        try:
            rows.append(pubmedqa_record(pmid, row if isinstance(row, dict) else {}))
        except _Bad as error:
            raise _fail(f"{pqal_path} (PMID {pmid})", str(error)) from None
    sources.records[(PUBMEDQA.name, "labeled")] = rows
    sources.pubmedqa_test_ids = _test_ids(_json(truth_path), truth_path)
    sources.files += [_provenance(pqal_path, raw_dir), _provenance(truth_path, raw_dir)]
    read_mmlu(raw_dir, sources, progress)
    sources.files.sort(key=lambda entry: entry["path"])
    return sources


def _test_ids(truth: dict, where: Path | str) -> dict[str, str]:
    for pmid, label in truth.items():
        if label not in PUBMEDQA_CHOICES:
            raise _fail(f"{where} (PMID {pmid})", f"label {label!r} is not one of yes, no, maybe")
    return {str(pmid): label for pmid, label in truth.items()}


# --- Hugging Face Hub (real code; never run in the offline workplace) ------------------------------


# (task, split) in `Sources.records` <- (Hub dataset, config, Hub split). Offline there are no MedQA and
# MedMCQA train releases; here their train splits are loaded and used instead of the dev sets.
HUB_DATASETS: dict[tuple[str, str], tuple[str, str | None, str]] = {
    (MEDQA.name, "test"): ("GBaker/MedQA-USMLE-4-options", None, "test"),
    (MEDQA.name, "train"): ("GBaker/MedQA-USMLE-4-options", None, "train"),
    (GSM8K.name, "train"): ("openai/gsm8k", "main", "train"),
    (GSM8K.name, "test"): ("openai/gsm8k", "main", "test"),
    (MEDMCQA.name, "train"): ("openlifescienceai/medmcqa", None, "train"),
    (PUBMEDQA.name, "labeled"): ("qiaojin/PubMedQA", "pqa_labeled", "train"),  # all 1000; split later
    **{(MMLU.name, split): ("cais/mmlu", "all", split) for split in ("dev", "validation", "test")},
    # Alpaca's 52k instructions (text-davinci-003 responses) instead of AlpacaEval's 805.
    (GENERAL_INSTRUCT.name, "all"): ("tatsu-lab/alpaca", None, "train"),
}


def _hub_converter(task: str, split: str) -> Callable[[dict, int], Record]:
    """row, index -> record; ids follow the raw path's scheme (index within the split or subject)."""
    if task == MEDQA.name:
        return lambda row, i: medqa_record(row, f"medqa-{split}-{i:05d}")
    if task == GSM8K.name:
        return lambda row, i: gsm8k_record(row, f"gsm8k-{split}-{i:05d}")
    if task == MEDMCQA.name:
        return lambda row, i: medmcqa_record(row, cop_base=0)  # the Hub's cop is a 0-based ClassLabel
    if task == PUBMEDQA.name:
        return lambda row, i: _hub_pubmedqa(row)
    if task == GENERAL_INSTRUCT.name:
        return lambda row, i: instruction_record(row, f"alpaca-{i:05d}", GENERAL_INSTRUCT)
    seen: dict[str, int] = {}

    def mmlu(row: dict, i: int) -> Record:
        subject = row["subject"]
        seen[subject] = seen.get(subject, -1) + 1
        record_id = f"mmlu-{split}-{subject}-{seen[subject]:04d}"
        return mmlu_record(row["question"], list(row["choices"]), int(row["answer"]), subject, record_id)

    return mmlu


def read_hub(pubmedqa_test_ids: Path | None = None, progress: Callable[[Iterator], Iterator] = iter) -> Sources:
    """Load every dataset of `HUB_DATASETS`, the official PubMedQA test ids and the Alpaca seed tasks."""
    import datasets  # deferred: heavy, and only this path needs it

    sources = Sources()
    for (task, split), (name, config, hub_split) in progress(list(HUB_DATASETS.items())):
        dataset = datasets.load_dataset(name, config, split=hub_split)
        make = _hub_converter(task, split)
        try:
            sources.records[task, split] = [make(dict(row), index) for index, row in enumerate(dataset)]
        except _Bad as error:
            where = f"Hub dataset {name} ({config or 'default'}, {hub_split})"
            raise _fail(where, str(error), "the Hub schema changed; pin an older revision or report it") from None
        sources.files.append(
            {"dataset": name, "config": config, "split": hub_split, "rows": dataset.num_rows,
             "fingerprint": dataset._fingerprint}  # identifies the exact data read
        )  # fmt: skip
    sources.pubmedqa_test_ids = _hub_test_ids(pubmedqa_test_ids, sources)
    seed_text = download_pinned(ALPACA_SEED_TASKS_URL, ALPACA_SEED_TASKS_SHA256, sources)
    sources.records[GENERAL_LM.name, "test"] = jsonl_records(
        seed_text.decode("utf-8"), ALPACA_SEED_TASKS_URL, seed_task_records
    )
    return sources


def download_pinned(url: str, sha256: str, sources: Sources) -> bytes:
    """The bytes at ``url``, which must hash to ``sha256`` (a pinned release file); recorded in sources."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except urllib.error.URLError as error:
        raise UserError(f"{url}: download failed ({error.reason}); check the network, or use --raw-dir") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise UserError(f"{url}: sha256 {digest} is not the pinned file's {sha256}; retry later")
    sources.files.append({"path": url, "sha256": digest, "bytes": len(data)})
    return data


def _hub_pubmedqa(row: dict) -> Record:
    """qiaojin/PubMedQA pqa_labeled (nested 'context', no year) -> the bigbio source field names."""
    context = row.get("context") or {}
    flat = {
        "QUESTION": row.get("question"),
        "CONTEXTS": context.get("contexts"),
        "LABELS": context.get("labels"),
        "MESHES": context.get("meshes"),
        "YEAR": None,
        "LONG_ANSWER": row.get("long_answer"),
        "final_decision": row.get("final_decision"),
    }
    return pubmedqa_record(str(row.get("pubid")), flat)


def _hub_test_ids(path: Path | None, sources: Sources) -> dict[str, str]:
    """The official 500 test PMIDs: a local test_ground_truth.json, else the pinned GitHub copy."""
    if path is None:
        data, origin = download_pinned(PUBMEDQA_TEST_IDS_URL, PUBMEDQA_TEST_IDS_SHA256, sources), PUBMEDQA_TEST_IDS_URL
    else:
        # A local file is the user's choice, checked against the labelled questions later and
        # recorded with its hash in the manifest.
        if not path.is_file():
            raise UserError(f"{path}: --pubmedqa-test-ids file not found")
        data, origin = path.read_bytes(), str(path)
        sources.files.append({"path": origin, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
    try:
        truth = json.loads(data)
    except json.JSONDecodeError as error:
        raise _fail(f"{origin}:{error.lineno}", f"malformed JSON ({error.msg})") from None
    if not isinstance(truth, dict) or not truth:
        raise _fail(origin, "expected a non-empty JSON object mapping PMID to yes/no/maybe")
    return _test_ids(truth, origin)
