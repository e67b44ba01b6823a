"""`medmoelora train` on the tiny model: every method learns, resume is exact, failures are clean.

Checkpoints, divergence and reruns in detail: test_resume.py; OS errors and corrupt files:
test_train_bad_inputs.py.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from medmoelora.cli import main
from medmoelora.config import METHODS
from medmoelora.training.config import build_run_config
from medmoelora.training.run import train

# Small and fast: a few short sequences, a high learning rate so that the loss visibly falls.
FAST = [
    "training.max_length=96",
    "training.batch_size=4",
    "training.max_examples_per_task=1",  # 4 examples = 1 batch: every step sees the same batch
    "training.learning_rate=0.01",
    "training.logging_steps=1",
    "training.save_steps=3",
    "training.routing_stats_examples=4",
]


def logged_losses(out: Path) -> list[float]:
    with (out / "train_log.csv").open() as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("method", METHODS)
def test_every_methods_training_loss_falls(method, tiny_model_dir, prepared_data_dir, tmp_path):
    config = build_run_config(method, overrides=[*FAST, "training.max_steps=8"])
    metrics = train(tiny_model_dir, prepared_data_dir, tmp_path, config)
    losses = logged_losses(tmp_path)
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.2, losses
    for name in ("adapter_config.json", "adapter_model.safetensors", "routing_stats.json", "train_metrics.json"):
        assert (tmp_path / name).is_file(), name
    assert metrics["method"] == method and metrics["steps"] == 8
    assert metrics["padding"] == "none"  # training.padding auto, on a CPU in one process
    assert metrics["tokens_per_second"] > 0 and metrics["peak_memory_mb"] > 0 and metrics["trainable_params"] > 0


@pytest.mark.parametrize("method", ["multi_lora", "med_moe_lora"])
def test_unpadded_steps_train_the_padded_steps_adapter(method, tiny_model_dir, prepared_data_dir, tmp_path):
    # FAST's 4 examples differ in length, so the padded batch carries padding the unpadded steps skip.
    adapters, losses = {}, {}
    for padding in ("batch", "none"):
        config = build_run_config(method, overrides=[*FAST, "training.max_steps=3", f"training.padding={padding}"])
        metrics = train(tiny_model_dir, prepared_data_dir, tmp_path / padding, config)
        assert metrics["padding"] == padding
        adapters[padding] = load_file(tmp_path / padding / "adapter_model.safetensors")
        losses[padding] = logged_losses(tmp_path / padding)
    assert losses["none"] == pytest.approx(losses["batch"], rel=1e-4)
    # Not element by element: Adam turns float noise in a near-zero gradient into a step of a good part of the
    # learning rate (seen: 5e-3 in one element of 0.1). Whole tensors stay within 1%; the gradients themselves
    # are compared in tests/adapters/test_unpadded.py.
    for name, tensor in adapters["batch"].items():
        assert (adapters["none"][name] - tensor).norm() <= 1e-2 * tensor.norm(), name


def test_aux_losses_temperature_and_routing_are_logged(tiny_model_dir, prepared_data_dir, tmp_path):
    config = build_run_config("med_moe_lora", overrides=[*FAST, "training.max_steps=2"])
    train(tiny_model_dir, prepared_data_dir, tmp_path, config)
    with (tmp_path / "train_log.csv").open() as handle:
        columns = next(csv.reader(handle))
    for column in (
        "loss",
        "lm_loss",
        "aux_balance",
        "aux_preservation",
        "aux_base_l2",
        "learning_rate",
        "temperature_mean",
        "max_expert_share",
    ):
        assert column in columns, column
    stats = json.loads((tmp_path / "routing_stats.json").read_text())
    assert set(stats["by_task"]) == {"medqa", "medmcqa", "pubmedqa", "general_instruct"}
    assert stats["overall"]["layers"]


class StopAfter(TrainerCallback):
    """Stops a run after a step, as if it had been killed right after its checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_a_run_stopped_and_resumed_ends_with_the_same_adapter(tiny_model_dir, prepared_data_dir, tmp_path):
    config = build_run_config("med_moe_lora", overrides=[*FAST, "training.max_steps=6"])
    train(tiny_model_dir, prepared_data_dir, tmp_path / "straight", config)
    train(tiny_model_dir, prepared_data_dir, tmp_path / "resumed", config, callbacks=[StopAfter(3)])
    assert (tmp_path / "resumed" / "checkpoints" / "checkpoint-3").is_dir()
    train(tiny_model_dir, prepared_data_dir, tmp_path / "resumed", config, resume=True)
    straight = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--model", "missing-model"], "--model missing-model is not a transformers model directory"),
        (["--data", "missing-data"], "--data missing-data does not exist"),
        (["--set", "training.max_steps=0"], "training.max_steps"),
        (["--set", "adapter.top_k=9"], "top_k"),
        (["--set", "max_steps=3"], "must start with adapter. or training."),
        (["--resume"], "no complete checkpoint under"),
    ],
)
def test_bad_input_fails_with_one_line_and_writes_nothing(
    arguments, message, tiny_model_dir, prepared_data_dir, tmp_path, capsys
):
    base = ["train", "--model", str(tiny_model_dir), "--data", str(prepared_data_dir), "--method", "med_moe_lora"]
    out = tmp_path / "out"
    argv = [*base, "--out", str(out), *arguments]
    # later occurrences win in argparse: the bad --model / --data replace the good ones
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error
    assert not out.exists()


def test_accelerate_launch_trains_on_two_cpu_processes(tiny_model_dir, prepared_data_dir, tmp_path):
    # accelerate 1.x: `--cpu` always runs one process (multi-CPU needs MPI); `--multi_gpu` starts the
    # processes with torchrun, and without a GPU they train on the CPU over gloo.
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "medmoelora.cli",
        "train",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(prepared_data_dir),
        "--method",
        "uniform_moe",
        "--out",
        str(tmp_path),
        *[f"--set={item}" for item in FAST],
        "--set",
        "training.max_steps=2",
        "--set",
        "training.batch_size=2",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "train_metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 2
    assert metrics["padding"] == "batch"  # auto: the padded batch through the distributed wrapper
    assert (tmp_path / "adapter_model.safetensors").is_file()
