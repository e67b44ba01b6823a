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
from medmoelora.data.prompts import instruction_plain_text
from medmoelora.errors import UserError
from medmoelora.tasks import MMLU_MEDICAL_SUBJECTS, get_prompt
from medmoelora.training.config import TrainConfig

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
    "general_instruct": {"instruction": str, "input": str, "output": str},
    "general_lm": {"instruction": str, "input": str, "output": str},
}  # fmt: skip
# Held-out draws small enough for the fixtures (3 non-test PubMedQA questions, 8 instructions).
SMALL = ("--pubmedqa-validation", "1", "--general-validation", "2")


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
    assert run("--raw-dir", str(FIXTURES), "--out", str(path), *SMALL) == 0
    return path


def test_files_counts_and_schema(out: Path) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {
        "general_instruct": {"train": 4, "validation": 1},
        "general_lm": {"test": 4},
        "gsm8k": {"test": 2, "train": 3},
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
    assert manifest["training_mixture"] == ["medqa/train", "medmcqa/train", "pubmedqa/train", "general_instruct/train"]


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
    probe = read(out / "general_lm/test.jsonl")
    assert [r["id"] for r in probe] == ["seed_task_0-0", "seed_task_1-0", "seed_task_9-0", "seed_task_9-1"]
    assert probe[3] == {"id": "seed_task_9-1", "task_id": "general_lm", "domain": "general",
                        "instruction": "Convert the temperature to Celsius.", "input": "32 F",
                        "output": "0 C"}  # fmt: skip
    general = read(out / "general_instruct/train.jsonl") + read(out / "general_instruct/validation.jsonl")
    assert {r["domain"] for r in general} == {"general"} and {r["input"] for r in general} == {""}


def test_overlap_dropped_and_recorded(out: Path) -> None:
    check = json.loads((out / "manifest.json").read_text())["overlap_check"]
    assert check["dropped"] == {"medqa": 1, "medmcqa": 1, "pubmedqa": 1, "general_instruct": 3}
    assert check["final_overlap"] == 0 and check["dropped_total"] == 6
    # The general instructions that copy a GSM8K test question, an MMLU (non-medical) test question and
    # a probe document's instruction + input are dropped from the general-domain training data.
    general_drops = [
        (drop["eval_id"], drop["match"])
        for split in ("general_instruct/train", "general_instruct/validation")
        for drop in check["per_split"][split]["dropped_records"]
    ]
    assert sorted(general_drops) == [
        ("gsm8k-test-00000", "exact"), ("mmlu-test-astronomy-0001", "normalized"), ("seed_task_9-1", "normalized")
    ]  # fmt: skip
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
    run("--raw-dir", str(FIXTURES), "--out", str(again), *SMALL)
    assert tree(again) == tree(out)
    run("--raw-dir", str(FIXTURES), "--out", str(again), *SMALL, "--seed", "3")
    assert json.loads((again / "manifest.json").read_text())["options"]["seed"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["processed"]  # no tmp/old siblings left behind


def test_general_task_none(tmp_path: Path) -> None:
    out = tmp_path / "o"
    run("--raw-dir", str(FIXTURES), "--out", str(out), *SMALL, "--general-task", "none")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training_mixture"] == ["medqa/train", "medmcqa/train", "pubmedqa/train"]
    assert "general_instruct" not in manifest["counts"] and not (out / "general_instruct").exists()
    assert (out / "gsm8k/train.jsonl").is_file()  # always kept: lm-eval's gsm8k few-shot split
    assert (out / "general_lm/test.jsonl").is_file()  # the probe is evaluated either way


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
    "instruction without output": ("alpaca_eval/alpaca_eval.jsonl", 5, '"output"', '"response"'),
    "seed task without instances": ("alpaca/seed_tasks.jsonl", 3, '"instances": [', '"instances": [], "x": ['),
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
            run("--raw-dir", str(raw), "--out", str(target), *SMALL)
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
    with pytest.raises(UserError, match=r"existing: cannot write the prepared data \(disk full\); choose an --out"):
        run("--raw-dir", str(FIXTURES), "--out", str(existing), *SMALL)
    assert tree(existing) == before
    assert [p.name for p in tmp_path.iterdir()] == ["existing"]


def test_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"--pubmedqa-validation 50 must be in 0\.\.2"):
        run("--raw-dir", str(FIXTURES), "--out", str(tmp_path / "o"))  # default 50 > 3 non-test questions
    with pytest.raises(UserError, match=r"--general-validation 8 must be in 0\.\.7 \(8 general-domain"):
        run("--raw-dir", str(FIXTURES), "--out", str(tmp_path / "o"), "--pubmedqa-validation", "1",
            "--general-validation", "8")  # fmt: skip
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match=r"without manifest\.json"):
        run("--raw-dir", str(FIXTURES), "--out", str(precious), *SMALL)
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
    assert before == {"medqa/train": 1272, "medmcqa/train": 4183, "pubmedqa/train": 450, "pubmedqa/validation": 50,
                      "general_instruct/train": 755, "general_instruct/validation": 50}  # fmt: skip
    # The one drop measured on the real data: a MedMCQA question whose whole text is
    # "Which of the following is true?", also an MMLU clinical_knowledge test question.
    assert sum(dropped.values()) <= 2, dropped
    assert check["final_overlap"] == 0
    counts = manifest["counts"]
    assert counts["medqa"] == {"test": 1273, "train": 1272 - dropped["medqa/train"]}
    assert counts["pubmedqa"]["test"] == 500
    assert counts["pubmedqa"]["train"] + counts["pubmedqa"]["validation"] + check["dropped"]["pubmedqa"] == 500
    assert counts["gsm8k"] == {"test": 1319, "train": 7473}  # few-shot examples only: not trained on
    assert counts["general_instruct"] == {
        "train": 755 - dropped["general_instruct/train"],
        "validation": 50 - dropped["general_instruct/validation"],
    }
    assert counts["general_lm"] == {"test": 175}
    assert counts["mmlu"] == {"dev": 285, "test": 14042, "validation": 1531}
    assert counts["medmcqa"] == {"train": 4183 - dropped["medmcqa/train"]}
    assert len({r["subject"] for r in read(real / "mmlu/test.jsonl")}) == 57
    for name, entry in manifest["files"].items():  # a raw U+2028 in GSM8K must not split a record
        assert len((real / name).read_text(encoding="utf-8").splitlines()) == entry["records"], name
    truth = json.loads((REAL_RAW / "pubmedqa/test_ground_truth.json").read_text())
    assert {r["id"].removeprefix("pubmedqa-"): r["final_decision"] for r in read(real / "pubmedqa/test.jsonl")} == truth


# --- forgetting probes vs training data, checked from the prepared files ------------------------------


def probe_documents(out: Path) -> dict[str, str]:
    """Normalised text -> id of every forgetting-probe document: GSM8K test, MMLU test outside the medical
    subjects, and the general LM probe (its whole text, and its instruction with its input)."""
    probes = {normalize(r["question"]): r["id"] for r in read(out / "gsm8k/test.jsonl")}
    mmlu = read(out / "mmlu/test.jsonl")
    probes |= {normalize(r["question"]): r["id"] for r in mmlu if r["subject"] not in MMLU_MEDICAL_SUBJECTS}
    for doc in read(out / "general_lm/test.jsonl"):
        probes[normalize(instruction_plain_text(doc))] = doc["id"]
        probes[normalize(f"{doc['instruction']}\n{doc['input']}")] = doc["id"]
    return probes


def training_files(out: Path) -> list[Path]:
    """What `medmoelora train` reads by default: each task's train split and its held-out validation split."""
    files = [out / task / f"{split}.jsonl" for task in TrainConfig().tasks for split in ("train", "validation")]
    return [path for path in files if path.is_file()]


# Fields that hold a question or an instruction in any task's schema. Not the answer options: some MMLU
# questions are one term ("Gluten", "Crohn's disease:") that a medical question may offer as an option.
QUESTION_KEYS = ("sent1", "QUESTION", "question", "instruction", "input")


def contamination(out: Path) -> list[tuple[str, str]]:
    """(training record id, probe id) for every training record with a text equal to a probe document's:
    its question or instruction, its input, its rendered prompt with and without the answer, and for an
    instruction its instruction with its input and its plain text."""
    probes = probe_documents(out)
    hits = set()
    for path in training_files(out):
        for record in read(path):
            prompt, answer = get_prompt(record["task_id"]).format(record)
            texts = [prompt, prompt + answer, *(record[key] for key in QUESTION_KEYS if key in record)]
            if "instruction" in record:
                texts += [f"{record['instruction']}\n{record['input']}", instruction_plain_text(record)]
            hits |= {(record["id"], probes[key]) for key in map(normalize, texts) if key in probes}
    return sorted(hits)


@pytest.mark.parametrize("data", ["out", "real"])
def test_no_forgetting_probe_document_in_training_data(data: str, request: pytest.FixtureRequest) -> None:
    out = request.getfixturevalue(data)
    manifest = json.loads((out / "manifest.json").read_text())
    read_in_training = {path.relative_to(out).with_suffix("").as_posix() for path in training_files(out)}
    assert set(manifest["training_mixture"]) <= read_in_training
    assert {"general_instruct/train", "general_instruct/validation"} <= read_in_training  # preservation data is there
    assert "gsm8k/train" not in read_in_training
    assert contamination(out) == []


def test_contamination_check_sees_a_planted_probe(out: Path, tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    shutil.copytree(out, planted)
    probe = read(planted / "general_lm/test.jsonl")[2]
    gsm8k = read(planted / "gsm8k/test.jsonl")[1]
    extra = [
        {**probe, "id": "copy-1", "task_id": "general_instruct", "instruction": probe["instruction"].upper()},
        {"id": "copy-2", "task_id": "general_instruct", "domain": "general", "instruction": "Solve:",
         "input": gsm8k["question"], "output": "18"},
    ]  # fmt: skip
    with (planted / "general_instruct/train.jsonl").open("a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in extra)
    assert contamination(planted) == [("copy-1", probe["id"]), ("copy-2", gsm8k["id"])]
