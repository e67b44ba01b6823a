"""`medmoelora prepare-data`: schema, determinism, contamination drops, atomic failure, real counts."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
from medmoelora import cli
from medmoelora.commands import prepare_data
from medmoelora.data import prepare as prepare_module
from medmoelora.data.overlap import normalize
from medmoelora.errors import UserError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "raw"
REAL_RAW = (Path(__file__).resolve().parents[2] / "../shared/data/raw").resolve()

# Every key of each task's records, in order: id/task_id/domain, then the Hub dataset's fields.
SCHEMA = {
    "medqa": {"sent1": str, "ending0": str, "ending1": str, "ending2": str, "ending3": str, "label": int},
    "pubmedqa": {"QUESTION": str, "CONTEXTS": list, "LABELS": list, "MESHES": list, "YEAR": (str, type(None)),
                 "LONG_ANSWER": str, "final_decision": str},
    "gsm8k": {"question": str, "answer": str},
    "mmlu": {"question": str, "subject": str, "choices": list, "answer": int},
    "medmcqa": {"question": str, "opa": str, "opb": str, "opc": str, "opd": str, "cop": int,
                "subject_name": (str, type(None)), "topic_name": (str, type(None)), "choice_type": str,
                "exp": (str, type(None))},
}  # fmt: skip


def run(*argv: str) -> int:
    """The subcommand through its own parser (cli.py lists it once the module is registered there)."""
    parser = argparse.ArgumentParser()
    prepare_data.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["prepare-data", *argv])
    return args.func(args)


def read(path: Path) -> list[dict]:
    # Not str.splitlines(): it also splits at U+2028 and friends; JSON Lines splits at "\n" only.
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n")[:-1]]


def tree(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prepared") / "processed"
    assert run("--raw-dir", str(FIXTURES), "--out", str(path), "--pubmedqa-validation", "1") == 0
    return path


def test_files_counts_and_schema(out: Path) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {
        "gsm8k": {"test": 2, "train": 2},
        "medmcqa": {"train": 3},
        "medqa": {"test": 3, "train": 2},
        "mmlu": {"dev": 2, "test": 5, "validation": 2},
        "pubmedqa": {"test": 3, "train": 1, "validation": 1},
    }
    assert sorted(manifest["files"]) == sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jsonl"))
    for name, entry in manifest["files"].items():
        records = read(out / name)
        assert len(records) == entry["records"]
        for record in records:
            task = record["task_id"]
            assert name.startswith(f"{task}/")
            assert list(record) == ["id", "task_id", "domain", *SCHEMA[task]]
            for key, kind in SCHEMA[task].items():
                assert isinstance(record[key], kind), (name, key)
        assert len({r["id"] for r in records}) == len(records)
    assert {s["path"] for s in manifest["sources"]} >= {"medmcqa/dev.json", "pubmedqa/ori_pqal.json"}
    assert manifest["schema_version"] == 1
    assert manifest["training_mixture"] == ["medqa/train", "medmcqa/train", "pubmedqa/train", "gsm8k/train"]


def test_values_are_normalised(out: Path) -> None:
    medqa = read(out / "medqa/test.jsonl")
    assert medqa[0]["ending1"] == "Electrocardiogram" and medqa[0]["label"] == 1
    medmcqa = {r["id"]: r for r in read(out / "medmcqa/train.jsonl")}
    # The raw release is 1-indexed (cop 2 = opb); the schema is 0-indexed like the Hub.
    assert medmcqa["medmcqa-aaaa0001-0000-0000-0000-000000000001"]["cop"] == 1
    assert medmcqa["medmcqa-aaaa0001-0000-0000-0000-000000000003"]["cop"] == 3
    mmlu = read(out / "mmlu/test.jsonl")
    assert [r["subject"] for r in mmlu] == ["anatomy"] * 3 + ["astronomy"] * 2
    assert {r["domain"] for r in mmlu if r["subject"] == "anatomy"} == {"medical"}
    assert {r["domain"] for r in mmlu if r["subject"] == "astronomy"} == {"general"}
    assert mmlu[1]["question"] == "The pleura\n(select the correct statement)" and mmlu[1]["answer"] == 2
    assert mmlu[4]["question"] == 'Which planet has the "Great Red Spot"?'
    pubmedqa = read(out / "pubmedqa/test.jsonl")
    assert [r["id"] for r in pubmedqa] == ["pubmedqa-1003", "pubmedqa-1001", "pubmedqa-1002"]
    assert pubmedqa[2]["YEAR"] is None and pubmedqa[0]["CONTEXTS"][1] == "Patients listened to music."
    assert read(out / "gsm8k/test.jsonl")[0]["answer"].endswith("#### 30")


def test_overlap_dropped_and_recorded(out: Path) -> None:
    check = json.loads((out / "manifest.json").read_text())["overlap_check"]
    assert check["dropped"] == {"medqa": 1, "medmcqa": 1, "pubmedqa": 1, "gsm8k": 1}
    assert check["final_overlap"] == 0 and check["dropped_total"] == 4
    assert check["per_split"]["medqa/train"]["dropped_records"] == [
        {"id": "medqa-dev-00001", "match": "exact", "eval_id": "medqa-test-00001"}
    ]
    assert check["per_split"]["medmcqa/train"]["dropped_records"][0]["match"] == "normalized"
    pubmedqa_drops = (
        check["per_split"]["pubmedqa/train"]["dropped"] + check["per_split"]["pubmedqa/validation"]["dropped"]
    )
    assert pubmedqa_drops == 1
    train_ids = {r["id"] for split in ("train", "validation") for r in read(out / f"pubmedqa/{split}.jsonl")}
    assert "pubmedqa-1006" not in train_ids
    assert normalize("Is  obesity a RISK-factor?\u00a0") == "is obesity a risk factor"


def test_rerun_is_byte_identical_and_replaces(out: Path, tmp_path: Path) -> None:
    again = tmp_path / "processed"
    run("--raw-dir", str(FIXTURES), "--out", str(again), "--pubmedqa-validation", "1")
    assert tree(again) == tree(out)
    run("--raw-dir", str(FIXTURES), "--out", str(again), "--pubmedqa-validation", "1", "--seed", "3")
    assert json.loads((again / "manifest.json").read_text())["options"]["seed"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["processed"]  # no tmp/old siblings left behind


@pytest.mark.parametrize(
    ("general", "mixture_tail", "mmlu_train"),
    [("mmlu", ["mmlu/train"], 4), ("none", [], None)],
)
def test_general_task(tmp_path: Path, general: str, mixture_tail: list[str], mmlu_train: int | None) -> None:
    out = tmp_path / "o"
    run("--raw-dir", str(FIXTURES), "--out", str(out), "--pubmedqa-validation", "1", "--general-task", general)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training_mixture"] == ["medqa/train", "medmcqa/train", "pubmedqa/train", *mixture_tail]
    assert manifest["counts"]["mmlu"].get("train") == mmlu_train
    assert (out / "gsm8k/train.jsonl").is_file()  # always kept: lm-eval's gsm8k few-shot split


def _corrupt(path: Path, line: int, old: str, new: str) -> None:
    lines = path.read_text(encoding="utf-8").split("\n")
    assert old in lines[line - 1], (path, line)
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    path.write_text("\n".join(lines), encoding="utf-8")


BAD_INPUTS = {
    "malformed json line": ("medqa/US/4_options/phrases_no_exclude_test.jsonl", 2, '"answer_idx"', "answer_idx"),
    "missing field": ("gsm8k/train.jsonl", 3, '"question"', '"query"'),
    "answer outside options (medqa)": ("medqa/dev/phrases_no_exclude_dev.jsonl", 3, '"answer_idx": "C"',
                                       '"answer_idx": "E"'),
    "answer outside options (mmlu)": ("mmlu/test/anatomy_test.csv", 4, ",B", ",E"),
    "cop zero in a 1-indexed file": ("medmcqa/dev.json", 4, '"cop":1', '"cop":0'),
    "gsm8k answer without ####": ("gsm8k/test.jsonl", 2, "#### 18", "18"),
    "pubmedqa bad decision": ("pubmedqa/ori_pqal.json", 4, '"final_decision": "maybe"', '"final_decision": "?"'),
}  # fmt: skip


@pytest.mark.parametrize("case", [*BAD_INPUTS, "missing file", "not utf-8"])
def test_bad_input_names_file_and_line_and_writes_nothing(out: Path, tmp_path: Path, case: str) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(FIXTURES, raw)
    if case == "missing file":
        rel, line = "gsm8k/test.jsonl", None
        (raw / rel).unlink()
    elif case == "not utf-8":
        rel, line = "gsm8k/test.jsonl", 3
        (raw / rel).write_bytes((raw / rel).read_bytes() + b'{"question": "\xff"}\n')
    else:
        rel, line, old, new = BAD_INPUTS[case]
        _corrupt(raw / rel, line, old, new)
    fresh, existing = tmp_path / "fresh" / "processed", tmp_path / "existing"
    shutil.copytree(out, existing)
    before = tree(existing)
    for target in (fresh, existing):
        with pytest.raises(UserError) as error:
            run("--raw-dir", str(raw), "--out", str(target), "--pubmedqa-validation", "1")
        message = str(error.value)
        assert "\n" not in message
        expected = str(raw / rel) + (f":{line}" if line and not rel.endswith("ori_pqal.json") else "")
        assert expected in message, message
        if rel.endswith("ori_pqal.json"):  # one JSON object, not lines: the entry is named by its PMID
            assert "(PMID 1003)" in message
    assert tree(existing) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "raw"]


def test_failure_while_writing_keeps_the_earlier_output(out: Path, tmp_path: Path, monkeypatch) -> None:
    existing = tmp_path / "existing"
    shutil.copytree(out, existing)
    before = tree(existing)
    calls = []

    def failing_write(path: Path, records: list) -> dict:
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_write(path, records)

    real_write = prepare_module._write_jsonl
    monkeypatch.setattr(prepare_module, "_write_jsonl", failing_write)
    with pytest.raises(OSError, match="disk full"):
        run("--raw-dir", str(FIXTURES), "--out", str(existing), "--pubmedqa-validation", "1")
    assert tree(existing) == before
    assert [p.name for p in tmp_path.iterdir()] == ["existing"]


def test_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"must be in 0\.\.2"):
        run("--raw-dir", str(FIXTURES), "--out", str(tmp_path / "o"))  # default 50 > 3 non-test questions
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match=r"without manifest\.json"):
        run("--raw-dir", str(FIXTURES), "--out", str(precious), "--pubmedqa-validation", "1")
    assert (precious / "notes.txt").read_text() == "keep me"


def test_cli_prints_one_line_and_exits_2(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ("medmoelora.commands.prepare_data",))
    argv = ["prepare-data", "--raw-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "nowhere: --raw-dir is not a directory" in errors[0]
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not REAL_RAW.is_dir():
        pytest.skip(f"real raw data not found at {REAL_RAW} (the shared/ directory beside the repository)")
    path = tmp_path_factory.mktemp("real") / "processed"
    assert run("--raw-dir", str(REAL_RAW), "--out", str(path)) == 0
    return path


def test_real_counts_and_zero_overlap(real: Path) -> None:
    manifest = json.loads((real / "manifest.json").read_text())
    check = manifest["overlap_check"]
    dropped = {name: report["dropped"] for name, report in check["per_split"].items()}
    before = {name: report["before"] for name, report in check["per_split"].items()}
    assert before == {"medqa/train": 1272, "medmcqa/train": 4183, "pubmedqa/train": 450,
                      "pubmedqa/validation": 50, "gsm8k/train": 7473}  # fmt: skip
    # The one drop measured on the real data: a MedMCQA question whose whole text is
    # "Which of the following is true?", also an MMLU clinical_knowledge test question.
    assert sum(dropped.values()) <= 2, dropped
    assert check["final_overlap"] == 0
    counts = manifest["counts"]
    assert counts["medqa"] == {"test": 1273, "train": 1272 - dropped["medqa/train"]}
    assert counts["pubmedqa"]["test"] == 500
    assert counts["pubmedqa"]["train"] + counts["pubmedqa"]["validation"] + check["dropped"]["pubmedqa"] == 500
    assert counts["gsm8k"] == {"test": 1319, "train": 7473 - dropped["gsm8k/train"]}
    assert counts["mmlu"] == {"dev": 285, "test": 14042, "validation": 1531}
    assert counts["medmcqa"] == {"train": 4183 - dropped["medmcqa/train"]}
    assert len({r["subject"] for r in read(real / "mmlu/test.jsonl")}) == 57
    for name, entry in manifest["files"].items():  # a raw U+2028 in GSM8K must not split a record
        assert len((real / name).read_text(encoding="utf-8").splitlines()) == entry["records"], name
    truth = json.loads((REAL_RAW / "pubmedqa/test_ground_truth.json").read_text())
    assert {r["id"].removeprefix("pubmedqa-"): r["final_decision"] for r in read(real / "pubmedqa/test.jsonl")} == truth
