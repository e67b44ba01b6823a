"""`medmoelora train` with gradient checkpointing: task routing survives the recomputation in backward."""

from __future__ import annotations

import json

from medmoelora.cli import main
from tests.training.test_train import FAST


def test_multi_lora_trains_with_gradient_checkpointing(tiny_model_dir, prepared_data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    overrides = [*FAST, "training.max_steps=2", "training.gradient_checkpointing=true"]
    argv = ["train", "--model", str(tiny_model_dir), "--data", str(prepared_data_dir), "--method", "multi_lora"]
    assert main([*argv, "--out", str(out), *[f"--set={item}" for item in overrides]]) == 0, capsys.readouterr().err
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] == 2
    stats = json.loads((out / "routing_stats.json").read_text())
    assert stats["overall"]["modules"]  # every task's expert was routed to after training
