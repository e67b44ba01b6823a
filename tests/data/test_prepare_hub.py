"""The --from-hub path, with `datasets.load_dataset` replaced by small in-memory Hub-shaped datasets."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from medmoelora import base_models
from medmoelora.commands import prepare_data
from medmoelora.data import sources
from medmoelora.errors import UserError

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
        # tatsu-lab/alpaca rows carry an `input` (often empty) and a rendered `text`.
        ("tatsu-lab/alpaca", None, "train"): [
            {**row, "input": "", "text": "..."} for row in _jsonl("alpaca_eval/alpaca_eval.jsonl")
        ]
        + [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "text": "..."}],
    }


def fake_urlopen(files: dict[str, bytes]):
    """urllib.request.urlopen serving ``files`` by URL (a context manager with read(), as the real one)."""

    def urlopen(url: str, timeout: float = 0) -> io.BytesIO:
        return io.BytesIO(files[url])

    return urlopen


def test_from_hub_builds_the_same_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tables = _hub_tables()
    calls = []

    def fake_load_dataset(name: str, config: str | None = None, split: str | None = None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(tables[name, config, split])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    # The Hub is faked, so the offline guard (tests run with HF_HUB_OFFLINE=1) must not stop the command.
    monkeypatch.setattr(base_models, "hub_offline", lambda: False)
    seed_tasks = (FIXTURES / "alpaca/seed_tasks.jsonl").read_bytes()
    monkeypatch.setattr(sources, "ALPACA_SEED_TASKS_SHA256", hashlib.sha256(seed_tasks).hexdigest())
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen({sources.ALPACA_SEED_TASKS_URL: seed_tasks}))
    parser = argparse.ArgumentParser()
    prepare_data.register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "processed"
    truth = FIXTURES / "pubmedqa/test_ground_truth.json"
    argv = ["prepare-data", "--from-hub", "--out", str(out), "--pubmedqa-validation", "1", "--general-validation", "2"]
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
    general = [
        json.loads(line)
        for split in ("train", "validation")
        for line in (out / f"general_instruct/{split}.jsonl").read_text().splitlines()
    ]
    assert "alpaca-00008" in {r["id"] for r in general}  # the Hub set, with its input kept
    assert next(r for r in general if r["id"] == "alpaca-00008")["input"] == "2 and 3"
    # 9 rows; 2 copy a probe (a GSM8K test question, a seed task): the Hub's MMLU here has no Great Red Spot.
    assert sum(manifest["counts"]["general_instruct"].values()) == 7
    assert manifest["overlap_check"]["dropped"]["general_instruct"] == 2
    assert manifest["counts"]["general_lm"] == {"test": 4}
    assert sources.ALPACA_SEED_TASKS_URL in {entry.get("path") for entry in manifest["sources"]}


def test_pinned_download_refuses_other_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    url, data = "https://example.org/file.jsonl", b"pinned\n"
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen({url: data}))
    read = sources.Sources()
    assert sources.download_pinned(url, hashlib.sha256(data).hexdigest(), read) == data
    assert read.files == [{"path": url, "sha256": hashlib.sha256(data).hexdigest(), "bytes": 7}]
    with pytest.raises(UserError, match=r"example\.org/file\.jsonl: sha256 .* is not the pinned file's 00"):
        sources.download_pinned(url, "00" * 32, sources.Sources())


def test_pinned_download_without_network_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(url: str, timeout: float = 0) -> io.BytesIO:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    with pytest.raises(UserError, match=r"^https://x/y: download failed \(\[Errno -3\] .*\); check the network"):
        sources.download_pinned("https://x/y", "00" * 32, sources.Sources())
