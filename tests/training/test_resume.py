"""Checkpoints and reruns: atomic saves, finite checkpoints after a NaN, what --resume may change,
finished runs, fresh logs, exact final loss, and one run per --out."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from medmoelora.cli import main
from medmoelora.training.config import build_run_config
from medmoelora.training.lock import LOCK_FILE, output_lock
from medmoelora.training.run import train
from medmoelora.training.trainer import TrainingDiverged
from tests.training.helpers import FAST, MAX_STEPS, checkpoints, cli, log_rows, one_error_line, run_config, snapshot


# ---- atomic checkpoints -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "failure",
    [
        OSError(28, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0"),
    ],
    ids=["oserror", "torch-runtime-error"],
)
def test_a_save_that_fails_leaves_no_partial_checkpoint(
    failure, tiny_model_dir, prepared_data_dir, tmp_path, monkeypatch, capsys
):
    """A full disk during the save of checkpoint-6: one line, checkpoint-3 intact, no checkpoint-6."""
    original = torch.save

    def save(obj, file, *args, **kwargs):
        if "checkpoint-6" in str(file) and str(file).endswith("optimizer.pt"):
            raise failure
        return original(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "run"
    assert main(cli(tiny_model_dir, prepared_data_dir, out)) == 2
    error = one_error_line(capsys)
    assert "checkpoint-6" in error and "free disk space" in error and "checkpoint-3 with --resume" in error, error
    assert checkpoints(out) == ["checkpoint-3"], "no partial checkpoint-6, no staging directory"
    assert not (out / "adapter_model.safetensors").exists() and not (out / "train_metrics.json").exists()

    monkeypatch.setattr(torch, "save", original)
    assert main(cli(tiny_model_dir, prepared_data_dir, out, "--resume")) == 0
    assert json.loads((out / "train_metrics.json").read_text())["steps"] == MAX_STEPS


def test_a_failed_first_save_leaves_nothing(tiny_model_dir, prepared_data_dir, tmp_path, monkeypatch, capsys):
    original = torch.save

    def save(obj, file, *args, **kwargs):
        if str(file).endswith("optimizer.pt"):
            raise OSError(28, "No space left on device", str(file))
        return original(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "new" / "run"
    assert main(cli(tiny_model_dir, prepared_data_dir, out)) == 2
    assert "could not save checkpoint" in one_error_line(capsys)
    assert not (tmp_path / "new").exists(), "the directories this run created are gone"


def test_resume_skips_incomplete_checkpoints_and_says_so(stopped_copy, tiny_model_dir, prepared_data_dir, capsys):
    out = stopped_copy
    root = out / "checkpoints"
    shutil.copytree(root / "checkpoint-3", root / "checkpoint-5")  # a save of an older version, cut short
    (root / "checkpoint-5" / "optimizer.pt").unlink()
    shutil.copytree(root / "checkpoint-3", root / ".incomplete" / "checkpoint-4")  # a save killed midway
    assert main(cli(tiny_model_dir, prepared_data_dir, out, "--resume")) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert any("incomplete checkpoint" in n and "checkpoint-5" in n and "optimizer.pt" in n for n in notes), notes
    assert any("incomplete checkpoint" in n and "checkpoint-4" in n for n in notes), notes
    assert any(n.startswith("note: resuming from") and n.endswith("checkpoint-3") for n in notes), notes
    assert [int(row["step"]) for row in log_rows(out)] == list(range(1, MAX_STEPS + 1))
    assert checkpoints(out) == ["checkpoint-3", "checkpoint-6"]


def test_a_plain_rerun_is_not_blocked_by_an_interrupted_first_save(stopped_copy, tiny_model_dir, prepared_data_dir):
    """Killed during its first save: only a staging directory and a log. A plain rerun starts afresh."""
    out = stopped_copy
    root = out / "checkpoints"
    shutil.move(root / "checkpoint-3", root / ".incomplete" / "checkpoint-3")
    for name in ("adapter_model.safetensors", "adapter_config.json", "train_metrics.json", "train_config.json"):
        (out / name).unlink()
    assert main(cli(tiny_model_dir, prepared_data_dir, out)) == 0
    assert [int(row["step"]) for row in log_rows(out)] == list(range(1, MAX_STEPS + 1))


# ---- NaN: only checkpoints with finite weights are kept ------------------------------------------------------
class PoisonAfter(TrainerCallback):
    """After a step's update (and before its checkpoint is saved) fill one layer's lora_A and lora_B with ``value``."""

    def __init__(self, step: int, value: float) -> None:
        self.step, self.value = step, value

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            layer = next(iter(kwargs["model"].adapter_layers().values()))
            with torch.no_grad():
                layer.lora_A.fill_(self.value)
                layer.lora_B.fill_(self.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        # non-finite weights: caught before checkpoint-4 is written
        (float("nan"), r"weights became non-finite at step 4; kept \S*checkpoint-2: lower training.learning_rate"),
        # finite but huge: checkpoint-4 is written, and its weights give a NaN loss at step 5
        (
            1e30,
            r"loss became (nan|inf) at step 5; removed checkpoint-4, saved after the update that diverged; "
            r"kept \S*checkpoint-2",
        ),
    ],
    ids=["nan-weights", "huge-weights"],
)
def test_after_divergence_only_finite_checkpoints_are_kept(value, message, tiny_model_dir, prepared_data_dir, tmp_path):
    config = build_run_config("lora", overrides=[*FAST, "training.max_steps=6", "training.save_steps=2"])
    with pytest.raises(TrainingDiverged, match=message):
        train(tiny_model_dir, prepared_data_dir, tmp_path, config, callbacks=[PoisonAfter(4, value)])
    assert checkpoints(tmp_path) == ["checkpoint-2"]
    weights = load_file(tmp_path / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


# ---- what --resume may change ---------------------------------------------------------------------------------
def test_resume_applies_a_changed_learning_rate_and_weight_decay_and_records_them(
    stopped_copy, tiny_model_dir, prepared_data_dir, tmp_path
):
    changed = run_config("training.learning_rate=0.005", "training.weight_decay=0.1")
    reference = tmp_path / "reference"
    train(tiny_model_dir, prepared_data_dir, reference, changed)
    train(tiny_model_dir, prepared_data_dir, stopped_copy, changed, resume=True)

    rates = [float(row["learning_rate"]) for row in log_rows(stopped_copy)]
    expected = [float(row["learning_rate"]) for row in log_rows(reference)]
    # steps 1-3 ran at the old rate (2x); from the checkpoint on, the schedule of the new one
    assert rates[:3] == pytest.approx([2 * rate for rate in expected[:3]], rel=1e-6)
    assert rates[3:] == pytest.approx(expected[3:], rel=1e-6)
    # every optimizer group (base experts, experts, router) ends with the reference run's hyperparameters
    groups, expected_groups = (
        torch.load(out / "checkpoints" / "checkpoint-6" / "optimizer.pt", weights_only=True)["param_groups"]
        for out in (stopped_copy, reference)
    )
    for group, expected_group in zip(groups, expected_groups, strict=True):
        for key in ("lr", "initial_lr", "weight_decay"):
            assert group[key] == pytest.approx(expected_group[key], rel=1e-6), (group["name"], key)
    recorded = json.loads((stopped_copy / "train_config.json").read_text())
    assert recorded["training"]["learning_rate"] == 0.005 and recorded["training"]["weight_decay"] == 0.1
    assert recorded["resumes"] == [
        {"step": 3, "changed": {"training.learning_rate": [0.01, 0.005], "training.weight_decay": [0.0, 0.1]}}
    ]


def test_resume_applies_changed_logging_and_save_intervals(stopped_copy, tiny_model_dir, prepared_data_dir):
    """Trainer would keep the checkpoint's intervals (3 and 1) from its trainer_state.json."""
    changed = run_config("training.save_steps=1", "training.logging_steps=2")
    train(tiny_model_dir, prepared_data_dir, stopped_copy, changed, resume=True)
    assert [int(row["step"]) for row in log_rows(stopped_copy)] == [1, 2, 3, 4, 6]
    assert checkpoints(stopped_copy) == ["checkpoint-5", "checkpoint-6"]
    recorded = json.loads((stopped_copy / "train_config.json").read_text())
    assert set(recorded["resumes"][0]["changed"]) == {"training.save_steps", "training.logging_steps"}


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("training.max_steps=8", "training.max_steps 6 -> 8"),
        ("training.batch_size=2", "training.batch_size 4 -> 2"),
        ("training.seed=1", "training.seed 0 -> 1"),
        ("adapter.top_k=1", "adapter.top_k"),
    ],
)
def test_resume_refuses_in_one_line_a_setting_it_cannot_apply(
    override, named, stopped_copy, tiny_model_dir, prepared_data_dir, capsys
):
    before = snapshot(stopped_copy)
    assert main([*cli(tiny_model_dir, prepared_data_dir, stopped_copy, "--resume"), "--set", override]) == 2
    error = one_error_line(capsys)
    assert named in error and "checkpoint-3" in error and "--overwrite" in error, error
    assert snapshot(stopped_copy) == before


def test_resume_refuses_other_training_data(stopped_copy, tiny_model_dir, prepared_data_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(prepared_data_dir, data)
    with (data / "medqa" / "train.jsonl").open("a") as handle:
        handle.write((data / "medqa" / "train.jsonl").read_text().splitlines()[0] + "\n")
    before = snapshot(stopped_copy)
    assert main(cli(tiny_model_dir, data, stopped_copy, "--resume")) == 2
    assert "inputs.data" in one_error_line(capsys)
    assert snapshot(stopped_copy) == before


def test_resume_on_a_finished_run_changes_nothing(straight, tmp_path, tiny_model_dir, prepared_data_dir, capsys):
    out = tmp_path / "run"
    shutil.copytree(straight[0], out)
    before = snapshot(out)
    assert main(cli(tiny_model_dir, prepared_data_dir, out, "--resume")) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert snapshot(out) == before


def test_overwrite_starts_a_fresh_log(straight, tmp_path, tiny_model_dir, prepared_data_dir):
    out = tmp_path / "run"
    shutil.copytree(straight[0], out)
    (out / "notes.txt").write_text("mine")
    assert main(cli(tiny_model_dir, prepared_data_dir, out, "--overwrite")) == 0
    assert [int(row["step"]) for row in log_rows(out)] == list(range(1, MAX_STEPS + 1))
    assert (out / "notes.txt").read_text() == "mine", "--overwrite clears the run's files only"


def test_a_resumed_run_logs_each_step_once_and_reports_the_loss_of_all_steps(
    straight, stopped_copy, tiny_model_dir, prepared_data_dir
):
    """Stopped after step 4, resumed from checkpoint-3: step 4 is redone, not logged twice."""
    metrics = train(tiny_model_dir, prepared_data_dir, stopped_copy, run_config(), resume=True)
    rows, expected = log_rows(stopped_copy), log_rows(straight[0])
    assert [int(row["step"]) for row in rows] == list(range(1, MAX_STEPS + 1))
    assert [float(row["loss"]) for row in rows] == pytest.approx([float(row["loss"]) for row in expected], rel=1e-5)
    assert metrics["final_loss"] == pytest.approx(straight[1]["final_loss"], rel=1e-6)
    resumed = load_file(stopped_copy / "adapter_model.safetensors")
    for name, tensor in load_file(straight[0] / "adapter_model.safetensors").items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)


# ---- one training per --out ----------------------------------------------------------------------------------
def test_a_second_training_into_the_same_out_fails_in_one_line(tmp_path, tiny_model_dir, prepared_data_dir, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with output_lock(out):  # a first training holds --out
        assert main(cli(tiny_model_dir, prepared_data_dir, out)) == 2
        error = one_error_line(capsys)
    assert f"--out {out} is in use by another training run" in error, error
    assert sorted(path.name for path in out.iterdir()) == []


def test_a_stale_lock_file_does_not_block(tmp_path, tiny_model_dir, prepared_data_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text("")  # left by a killed run: the kernel has dropped its lock
    assert main(cli(tiny_model_dir, prepared_data_dir, out, "--set", "training.max_steps=1")) == 0
    assert not (out / LOCK_FILE).exists()
