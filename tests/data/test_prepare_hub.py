"""The --from-hub path, with `datasets.load_dataset` replaced by small in-memory Hub-shaped datasets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from medmoelora import base_models
from medmoelora.commands import prepare_data

datasets = pytest.importorskip("datasets")
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "raw"


def _jsonl(rel: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / rel).read_text().splitlines()]


def _hub_tables() -> dict[tuple[str, str | None, str], list[dict]]:
    """The fixtures rewritten in each Hub dataset's own schema (what load_dataset would return)."""
    medqa = "medqa/US/4_options/phrases_no_exclude_test.jsonl"
    pqal = json.loads((FIXTURES / "pubmedqa/ori_pqal.json").read_text())
    pubmedqa = [
        {"pubid": int(pmid), "question": row["QUESTION"], "long_answer": row["LONG_ANSWER"],
         "final_decision": row["final_decision"],
         "context": {"contexts": row["CONTEXTS"], "labels": row["LABELS"], "meshes": row["MESHES"]}}
        for pmid, row in pqal.items()
    ]  # fmt: skip
    # The Hub's MedMCQA `cop` is a 0-indexed ClassLabel, unlike the raw release's 1-indexed one.
    medmcqa = [{**row, "cop": row["cop"] - 1} for row in _jsonl("medmcqa/dev.json")]
    mmlu = {
        split: [{"question": "Which bone is in the arm?", "subject": "anatomy", "choices": list("wxyz"),
                 "answer": 1}, {"question": f"Astronomy {split}?", "subject": "astronomy",
                 "choices": list("abcd"), "answer": 3}]
        for split in ("dev", "validation", "test")
    }  # fmt: skip
    return {
        ("GBaker/MedQA-USMLE-4-options", None, "test"): _jsonl(medqa),
        ("GBaker/MedQA-USMLE-4-options", None, "train"): _jsonl("medqa/dev/phrases_no_exclude_dev.jsonl"),
        ("openai/gsm8k", "main", "train"): _jsonl("gsm8k/train.jsonl"),
        ("openai/gsm8k", "main", "test"): _jsonl("gsm8k/test.jsonl"),
        ("openlifescienceai/medmcqa", None, "train"): medmcqa,
        ("qiaojin/PubMedQA", "pqa_labeled", "train"): pubmedqa,
        **{("cais/mmlu", "all", split): rows for split, rows in mmlu.items()},
    }


def test_from_hub_builds_the_same_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tables = _hub_tables()
    calls = []

    def fake_load_dataset(name: str, config: str | None = None, split: str | None = None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(tables[name, config, split])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    # The Hub is faked, so the offline guard (tests run with HF_HUB_OFFLINE=1) must not stop the command.
    monkeypatch.setattr(base_models, "hub_offline", lambda: False)
    parser = argparse.ArgumentParser()
    prepare_data.register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "processed"
    truth = FIXTURES / "pubmedqa/test_ground_truth.json"
    argv = ["prepare-data", "--from-hub", "--out", str(out), "--pubmedqa-validation", "1"]
    args = parser.parse_args([*argv, "--pubmedqa-test-ids", str(truth)])
    assert args.func(args) == 0
    assert sorted(calls) == sorted(tables)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["source"] == "hub"
    assert manifest["counts"]["medqa"] == {"test": 3, "train": 2}  # the duplicated question is dropped
    medmcqa = {r["id"]: r["cop"] for r in map(json.loads, (out / "medmcqa/train.jsonl").read_text().splitlines())}
    assert medmcqa["medmcqa-aaaa0001-0000-0000-0000-000000000001"] == 1  # same answer as the raw path
    first = json.loads((out / "pubmedqa/test.jsonl").read_text().splitlines()[0])
    assert first["id"] == "pubmedqa-1003" and first["YEAR"] is None and first["CONTEXTS"][0].startswith("Anxiety")
    mmlu = [json.loads(line) for line in (out / "mmlu/test.jsonl").read_text().splitlines()]
    assert [r["id"] for r in mmlu] == ["mmlu-test-anatomy-0000", "mmlu-test-astronomy-0000"]
    assert mmlu[0]["domain"] == "medical" and mmlu[0]["answer"] == 1
    assert manifest["overlap_check"]["final_overlap"] == 0
