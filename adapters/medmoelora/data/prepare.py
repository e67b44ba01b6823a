"""Turn the read sources into OUT/<task>/<split>.jsonl plus OUT/manifest.json, atomically.

Record order follows the source files (the Hub's order too), so that lm-eval's few-shot samplers pick
the same examples as the built-in tasks; the seed only draws the held-out validation records of PubMedQA
and of the general-domain instructions, and the training code shuffles. Nothing here reads a clock or an
absolute path, so reruns are byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medmoelora import atomic
from medmoelora.data.overlap import METHOD, EvalIndex, count_overlap, drop_overlap
from medmoelora.data.sources import SCHEMA_VERSION, Record, Sources
from medmoelora.errors import UserError
from medmoelora.tasks import (
    DATA_TASKS,
    DEFAULT_GENERAL_TRAINING,
    EVAL_SPLIT,
    EVAL_TASKS,
    GENERAL_INSTRUCT,
    GENERAL_LM,
    GSM8K,
    MEDMCQA,
    MEDQA,
    MMLU,
    MMLU_MEDICAL_SUBJECTS,
    PUBMEDQA,
)

Split = tuple[str, str]
# The test split of every task that an evaluation task reads, in the registry's order.
EVAL_SPLITS: tuple[Split, ...] = tuple(dict.fromkeys((task.data_task.name, EVAL_SPLIT) for task in EVAL_TASKS.values()))
MEDICAL_TRAIN: tuple[Split, ...] = tuple(
    (name, "train") for name, task in DATA_TASKS.items() if task.domain == "medical" and task.default_training
)
# Line breaks that json.dumps(ensure_ascii=False) leaves raw but str.splitlines() splits at; escaping
# them keeps one record a line for every reader (the decoded text is unchanged).
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


@dataclass(frozen=True)
class Options:
    """What the manifest records about how the data was made (no output path: it may move)."""

    source: str  # "raw" or "hub"
    raw_dir: str | None
    general_task: str = DEFAULT_GENERAL_TRAINING
    pubmedqa_validation: int = 50
    seed: int = 0
    general_validation: int = 50


def check_out(out: Path) -> None:
    """Refuse to replace anything but a missing/empty directory or an earlier prepare-data output."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise UserError(f"{out}: --out is a non-empty directory without manifest.json; refusing to replace it")


def _held_out(
    records: list[Record], count: int, seed: int | str, flag: str, what: str
) -> tuple[list[Record], list[Record]]:
    """(train, validation): ``count`` records drawn with ``seed`` for validation, both in source order."""
    if not 0 <= count < len(records):
        raise UserError(f"{flag} {count} must be in 0..{len(records) - 1} ({len(records)} {what})")
    chosen = set(random.Random(seed).sample(range(len(records)), count))
    return [r for i, r in enumerate(records) if i not in chosen], [r for i, r in enumerate(records) if i in chosen]


def _split_pubmedqa(sources: Sources, options: Options) -> dict[Split, list[Record]]:
    """Official 500 test PMIDs -> test; the other labelled questions -> train + seeded validation."""
    labeled = {record["id"].removeprefix("pubmedqa-"): record for record in sources.records[PUBMEDQA.name, "labeled"]}
    test = []
    for pmid, label in sources.pubmedqa_test_ids.items():
        if pmid not in labeled:
            raise UserError(f"PubMedQA test PMID {pmid} is not among the labelled questions; use matching files")
        if labeled[pmid]["final_decision"] != label:
            raise UserError(f"PubMedQA PMID {pmid}: test label {label!r} differs from ori_pqal's; re-download")
        test.append(labeled[pmid])
    pool = [record for pmid, record in labeled.items() if pmid not in sources.pubmedqa_test_ids]
    train, validation = _held_out(
        pool, options.pubmedqa_validation, options.seed, "--pubmedqa-validation", "non-test PubMedQA questions"
    )
    return {(PUBMEDQA.name, "test"): test, (PUBMEDQA.name, "train"): train, (PUBMEDQA.name, "validation"): validation}


def build_splits(sources: Sources, options: Options) -> tuple[dict[Split, list[Record]], list[Split]]:
    """All output splits, and the training splits that the contamination check filters."""
    records = sources.records
    # Offline there is no MedQA/MedMCQA train release: their dev sets stand in (see SOURCES.md).
    medqa, medmcqa, gsm8k, mmlu, general = MEDQA.name, MEDMCQA.name, GSM8K.name, MMLU.name, GENERAL_INSTRUCT.name
    splits: dict[Split, list[Record]] = {
        (medqa, "test"): records[medqa, "test"],
        (medqa, "train"): records.get((medqa, "train")) or records[medqa, "dev"],
        (medmcqa, "train"): records.get((medmcqa, "train")) or records[medmcqa, "validation"],
        # GSM8K's train split is lm-eval's GSM8K few-shot split; nothing trains on it by default.
        (gsm8k, "train"): records[gsm8k, "train"],
        (gsm8k, "test"): records[gsm8k, "test"],
        **{(mmlu, split): records[mmlu, split] for split in ("dev", "validation", "test")},
        (GENERAL_LM.name, EVAL_SPLIT): records[GENERAL_LM.name, EVAL_SPLIT],  # the general LM probe
        **_split_pubmedqa(sources, options),
    }
    # Held-out splits count as training data here: they are read during training (held-out loss).
    training = [*MEDICAL_TRAIN, (PUBMEDQA.name, "validation")]
    if options.general_task == general:
        splits[general, "train"], splits[general, "validation"] = _held_out(
            records[general, "all"],
            options.general_validation,
            f"{options.seed}-{general}",
            "--general-validation",
            "general-domain instructions",
        )
        training += [(general, "train"), (general, "validation")]
    return splits, training


def _name(split: Split) -> str:
    return f"{split[0]}/{split[1]}"


def _write_jsonl(path: Path, records: list[Record]) -> dict[str, Any]:
    digest, size = hashlib.sha256(), 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        for record in records:
            line = (json.dumps(record, ensure_ascii=False).translate(_LINE_BREAKS) + "\n").encode("utf-8")
            digest.update(line)
            size += len(line)
            handle.write(line)
    return {"records": len(records), "sha256": digest.hexdigest(), "bytes": size}


def prepare(
    sources: Sources, out: Path, options: Options, progress: Callable[[Iterable], Iterator] = iter
) -> dict[str, Any]:
    """Split, decontaminate, write every file and the manifest; return the manifest."""
    splits, training = build_splits(sources, options)
    index = EvalIndex.build([record for split in EVAL_SPLITS for record in splits[split]])
    per_split = {}
    for split in training:
        splits[split], per_split[_name(split)] = drop_overlap(splits[split], index)
    final = sum(count_overlap(splits[split], index) for split in training)
    if final:  # drop_overlap removed every hit, so this is a bug, not a data problem
        raise RuntimeError(f"contamination check left {final} overlapping training records")
    dropped: dict[str, int] = {}
    for split in training:
        dropped[split[0]] = dropped.get(split[0], 0) + per_split[_name(split)]["dropped"]

    check_out(out)
    try:
        with atomic.replace_directory(out) as tmp:  # an earlier OUT is removed only once the new one is in
            files = {}
            for split in progress(sorted(splits)):
                files[f"{_name(split)}.jsonl"] = _write_jsonl(tmp / f"{_name(split)}.jsonl", splits[split])
            counts: dict[str, dict[str, int]] = {}
            for task, split in sorted(splits):
                counts.setdefault(task, {})[split] = len(splits[task, split])
            general = [] if options.general_task == "none" else [(options.general_task, "train")]
            manifest = {
                "schema_version": SCHEMA_VERSION,
                "generator": "medmoelora prepare-data",
                "options": asdict(options),
                "sources": sources.files,
                "counts": counts,
                "files": files,
                "evaluation_sets": [_name(s) for s in EVAL_SPLITS],
                "training_mixture": [_name(s) for s in (*MEDICAL_TRAIN, *general)],
                "mmlu_medical_subjects": list(MMLU_MEDICAL_SUBJECTS),
                "overlap_check": {
                    "method": METHOD,
                    "evaluation_sets": [_name(s) for s in EVAL_SPLITS],
                    "training_splits": [_name(s) for s in training],
                    "dropped": dropped,
                    "dropped_total": sum(dropped.values()),
                    "per_split": per_split,
                    "final_overlap": final,
                },
            }
            text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
            (tmp / "manifest.json").write_text(text, encoding="utf-8")
            check_out(out)  # still replaceable: nothing else took OUT while the files were written
    except OSError as error:  # an unwritable directory, a full disk: replace_directory left nothing behind
        raise UserError(
            f"{error.filename or out}: cannot write the prepared data ({error.strerror or error}); choose an "
            "--out on a writable disk with free space"
        ) from None
    return manifest
