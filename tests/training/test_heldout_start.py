"""The held-out start measured once (`medmoelora heldout-start`) and read by every run (`train --heldout-start`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medmoelora.cli import main
from medmoelora.training.config import build_run_config
from medmoelora.training.run import train
from tests.training.test_train import FAST

STEPS = "training.max_steps=2"


def write_start(model: Path, data: Path, out: Path, *overrides: str) -> dict:
    sets = [f"--set={item}" for item in [*FAST, *overrides]]
    assert main(["heldout-start", "--model", str(model), "--data", str(data), "--out", str(out), *sets]) == 0
    return json.loads(out.read_text())


def start_of(heldout: dict) -> dict:
    """The start values of train_metrics.json's `heldout`, per task."""
    return {
        task: {name: value for name, value in entry.items() if name.endswith("_start")}
        for task, entry in heldout.items()
    }


@pytest.mark.parametrize("method", ["lora", "multi_lora", "med_moe_lora"])
def test_a_run_reading_the_start_file_writes_what_it_would_measure_bit_for_bit(
    method, tiny_model_dir, prepared_data_dir, tmp_path, capsys
):
    start_file = tmp_path / "heldout_start.json"
    record = write_start(tiny_model_dir, prepared_data_dir, start_file)
    assert record["start"] and record["key"]["device"] == "cpu" and record["key"]["dtype"] == "float32"
    config = build_run_config(method, overrides=[*FAST, STEPS])
    measured = train(tiny_model_dir, prepared_data_dir, tmp_path / "measured", config)["heldout"]
    capsys.readouterr()
    read = train(tiny_model_dir, prepared_data_dir, tmp_path / "read", config, heldout_start=start_file)["heldout"]
    assert "measuring the held-out start" not in capsys.readouterr().err  # the file was used
    assert read == measured  # start and end, every task, exactly
    # and the file holds the plain base model's numbers, the start of every run
    assert start_of(read) == {
        task: {f"{name}_start": value for name, value in entry.items() if name != "tokens"}
        for task, entry in record["start"].items()
    }


def test_a_start_file_of_other_held_out_examples_is_not_used(tiny_model_dir, prepared_data_dir, tmp_path, capsys):
    start_file = tmp_path / "heldout_start.json"
    write_start(tiny_model_dir, prepared_data_dir, start_file, "training.max_length=64")  # other tokens
    config = build_run_config("lora", overrides=[*FAST, STEPS])
    capsys.readouterr()
    read = train(tiny_model_dir, prepared_data_dir, tmp_path / "read", config, heldout_start=start_file)["heldout"]
    note = capsys.readouterr().err
    assert "was measured for other settings (examples" in note and "measuring the held-out start in this run" in note
    measured = train(tiny_model_dir, prepared_data_dir, tmp_path / "measured", config)["heldout"]
    assert read == measured


def test_a_start_file_of_another_model_is_not_used(tiny_model_dir, prepared_data_dir, tmp_path, capsys):
    start_file = tmp_path / "heldout_start.json"
    record = write_start(tiny_model_dir, prepared_data_dir, start_file)
    record["key"]["model"] = "0" * 16
    record["start"] = {task: {**entry, "loss": 123.0} for task, entry in record["start"].items()}
    start_file.write_text(json.dumps(record))
    config = build_run_config("lora", overrides=[*FAST, STEPS])
    capsys.readouterr()
    read = train(tiny_model_dir, prepared_data_dir, tmp_path / "read", config, heldout_start=start_file)["heldout"]
    assert "was measured for other settings (model '0000000000000000'" in capsys.readouterr().err
    assert all(entry["loss_start"] != 123.0 for entry in read.values())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found; write it with `medmoelora heldout-start`"),
        ("{not json", "is not JSON"),
        ('{"format": "something else", "start": {}}', "is not a held-out start file"),
    ],
)
def test_a_bad_start_file_fails_with_one_line_and_writes_nothing(
    content, message, tiny_model_dir, prepared_data_dir, tmp_path, capsys
):
    start_file = tmp_path / "heldout_start.json"
    if content is not None:
        start_file.write_text(content)
    out = tmp_path / "out"
    argv = ["train", "--model", str(tiny_model_dir), "--data", str(prepared_data_dir), "--method", "lora"]
    assert main([*argv, "--out", str(out), "--heldout-start", str(start_file), *(f"--set={s}" for s in FAST)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0] and str(start_file) in error[0], error
    assert not out.exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--model", "missing-model"], "--model missing-model is not a transformers model directory"),
        (["--data", "missing-data"], "--data missing-data does not exist"),
        (["--set", "training.heldout_examples=-1"], "training.heldout_examples"),
        (["--set", "training.bogus=1"], "bogus"),
    ],
)
def test_heldout_start_bad_input_fails_with_one_line_and_writes_nothing(
    arguments, message, tiny_model_dir, prepared_data_dir, tmp_path, capsys
):
    out = tmp_path / "heldout_start.json"
    argv = ["heldout-start", "--model", str(tiny_model_dir), "--data", str(prepared_data_dir), "--out", str(out)]
    assert main([*argv, *arguments]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error
    assert not out.exists()
