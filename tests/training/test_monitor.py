"""The general-skill monitor: a probe column every N steps, a warning past the threshold, the adapt rule."""

from __future__ import annotations

import csv
import json
import logging
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, TrainerControl, TrainerState

from medmoelora import AdapterConfig, inject_adapter
from medmoelora.cli import main
from medmoelora.errors import UserError
from medmoelora.tasks import TRAINING_TASKS
from medmoelora.training.config import build_run_config
from medmoelora.training.heldout import mean_token_nll
from medmoelora.training.monitor import ADAPT_CAP, GeneralSkillMonitor, probe_examples, probe_records, probe_task_id
from medmoelora.training.run import train
from tests.tiny import randomize_adapter
from tests.training.test_train import FAST

TASKS = TRAINING_TASKS  # medqa, medmcqa, pubmedqa, general_instruct
DEGRADE_SCALE = 1.0  # random adapter weights this large make the probe loss worse (by 0.3% here)
# The tiny random model's logits stay small whatever its adapters do (a norm, then a head of std 0.02),
# so its loss cannot move by the default 1%: the tests use a smaller threshold.
THRESHOLD = 0.001


def monitored_model(model_dir, data_dir, preset="med_moe_lora", adapt=True):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    adapted = inject_adapter(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), AdapterConfig.from_preset(preset)
    )
    examples = probe_examples(probe_records(data_dir, "mmlu", "validation", 16, TASKS), tokenizer, 96, task_id=0)
    monitor = GeneralSkillMonitor(adapted, examples, every=1, threshold=THRESHOLD, adapt=adapt)
    return adapted, monitor


def test_the_probe_holds_general_records_that_no_training_task_holds(prepared_data_dir, tmp_path):
    records = probe_records(prepared_data_dir, "mmlu", "validation", 16, TASKS)
    assert [record["id"] for record in records] == ["mmlu-validation-astronomy-0000"]  # anatomy is medical
    data = tmp_path / "processed"
    shutil.copytree(prepared_data_dir, data)
    with (data / "general_instruct/train.jsonl").open("a", encoding="utf-8") as pool:  # a pool holding the probe
        pool.write((data / "mmlu/validation.jsonl").read_text(encoding="utf-8"))
    with pytest.raises(UserError, match="no general-domain record outside the training data"):
        probe_records(data, "mmlu", "validation", 16, TASKS)


def test_missing_probe_data_fails_with_one_line_and_writes_nothing(tiny_model_dir, prepared_data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "train",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(prepared_data_dir),
        "--method",
        "lora",
        "--out",
        str(out),
        "--set",
        "training.monitor_split=nowhere",
    ]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "mmlu/nowhere.jsonl not found" in error[0] and "monitor_steps=0" in error[0]
    assert not out.exists()


def read_log(out):
    with (out / "train_log.csv").open() as handle:
        return {int(row["step"]): row for row in csv.DictReader(handle)}


def test_the_probe_is_a_train_log_column_every_n_steps_and_starts_at_the_base_model(
    tiny_model_dir, prepared_data_dir, tmp_path
):
    overrides = [*FAST, "training.max_steps=4", "training.monitor_steps=2", "training.logging_steps=3"]
    metrics = train(tiny_model_dir, prepared_data_dir, tmp_path, build_run_config("med_moe_lora", overrides=overrides))
    rows = read_log(tmp_path)
    assert sorted(rows) == [2, 3, 4]  # 3: the logging step; 2 and 4: the monitor's checks
    assert rows[3]["general_probe_loss"] == ""
    probe = metrics["general_probe"]
    assert [entry["step"] for entry in probe["history"]] == [0, 2, 4]
    for entry in probe["history"][1:]:
        assert float(rows[entry["step"]]["general_probe_loss"]) == pytest.approx(entry["loss"])
        assert float(rows[entry["step"]]["general_probe_change"]) == pytest.approx(
            entry["loss"] / probe["reference_loss"] - 1
        )
    _, monitor = monitored_model(tiny_model_dir, prepared_data_dir)
    base = mean_token_nll(AutoModelForCausalLM.from_pretrained(tiny_model_dir), monitor.examples)
    assert probe["reference_loss"] == base["loss"] and probe["tokens"] == base["tokens"]
    assert json.loads((tmp_path / "train_metrics.json").read_text())["general_probe"] == probe


def test_a_planted_degradation_warns_once_per_check_and_adapt_doubles_the_weights_up_to_the_cap(
    tiny_model_dir, prepared_data_dir, caplog
):
    adapted, monitor = monitored_model(tiny_model_dir, prepared_data_dir)
    initial = AdapterConfig.from_preset("med_moe_lora")
    state, control = TrainerState(), TrainerControl()
    monitor.on_train_begin(None, state, control)
    state.global_step = 1
    with caplog.at_level(logging.WARNING, logger="medmoelora.training.monitor"):
        monitor.on_step_end(None, state, control)  # unchanged model: no degradation
    assert caplog.records == [] and control.should_log
    assert monitor.pop_log_values() == pytest.approx(
        {
            "general_probe_loss": monitor.reference,
            "general_probe_change": 0.0,
            "preservation_weight": initial.preservation_weight,
            "base_l2_weight": initial.base_l2_weight,
        }
    )
    randomize_adapter(adapted, scale=DEGRADE_SCALE)
    expected = [2.0, 4.0, 8.0, 16.0, 16.0]  # doubled at every check past the threshold, capped at ADAPT_CAP
    assert expected[-1] == ADAPT_CAP
    for step, factor in enumerate(expected, start=2):
        state.global_step = step
        with caplog.at_level(logging.WARNING, logger="medmoelora.training.monitor"):
            monitor.on_step_end(None, state, control)
        assert monitor.history[-1]["change"] > THRESHOLD
        assert adapted.loss_weights.preservation == pytest.approx(initial.preservation_weight * factor)
        assert adapted.loss_weights.base_l2 == pytest.approx(initial.base_l2_weight * factor)
        assert adapted.loss_weights.balance == initial.balance_weight  # not a base-expert regulariser
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 5 and all("\n" not in message for message in messages)
    assert "past the 0.10% threshold" in messages[0]
    assert f"preservation_weight now {2 * initial.preservation_weight:g}" in messages[0]
    assert monitor.warned_steps == [2, 3, 4, 5, 6]


def test_without_adapt_it_warns_but_leaves_the_weights(tiny_model_dir, prepared_data_dir, caplog):
    adapted, monitor = monitored_model(tiny_model_dir, prepared_data_dir, adapt=False)
    state, control = TrainerState(), TrainerControl()
    monitor.on_train_begin(None, state, control)
    randomize_adapter(adapted, scale=DEGRADE_SCALE)
    state.global_step = 1
    with caplog.at_level(logging.WARNING, logger="medmoelora.training.monitor"):
        monitor.on_step_end(None, state, control)
    assert len(caplog.records) == 1
    assert adapted.loss_weights.preservation == AdapterConfig.from_preset("med_moe_lora").preservation_weight
    assert set(monitor.pop_log_values()) == {"general_probe_loss", "general_probe_change"}


def test_a_weight_of_zero_stays_zero(tiny_model_dir, prepared_data_dir):
    adapted, monitor = monitored_model(tiny_model_dir, prepared_data_dir, preset="lora")
    state, control = TrainerState(), TrainerControl()
    monitor.on_train_begin(None, state, control)
    randomize_adapter(adapted, scale=DEGRADE_SCALE)
    state.global_step = 1
    monitor.on_step_end(None, state, control)
    assert monitor.warned_steps == [1] and adapted.loss_weights.preservation == adapted.loss_weights.base_l2 == 0.0


def test_a_resumed_run_takes_back_the_raised_weights_and_the_history(tiny_model_dir, prepared_data_dir):
    adapted, monitor = monitored_model(tiny_model_dir, prepared_data_dir)
    state = TrainerState(global_step=4)
    state.log_history = [
        {"loss": 1.0, "step": 1},
        {
            "loss": 1.0,
            "general_probe_loss": 5.0,
            "general_probe_change": 0.02,
            "preservation_weight": 0.02,
            "base_l2_weight": 2e-4,
            "step": 2,
        },
        {
            "loss": 1.0,
            "general_probe_loss": 5.1,
            "general_probe_change": 0.04,
            "preservation_weight": 0.04,
            "base_l2_weight": 4e-4,
            "step": 4,
        },
    ]
    monitor.on_train_begin(None, state, TrainerControl())
    assert [entry["step"] for entry in monitor.history] == [0, 2, 4] and monitor.warned_steps == [2, 4]
    assert adapted.loss_weights.preservation == 0.04 and adapted.loss_weights.base_l2 == 4e-4


class Degrade(TrainerCallback):
    """Makes the adapter hurt the general probe after a step (before the monitor's check of that step)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            randomize_adapter(kwargs["model"], scale=DEGRADE_SCALE)


def test_in_a_run_the_raised_weights_are_logged_and_recorded(tiny_model_dir, prepared_data_dir, tmp_path, caplog):
    overrides = [
        *FAST,
        "training.max_steps=3",
        "training.monitor_steps=1",
        "training.monitor_adapt=true",
        f"training.monitor_threshold={THRESHOLD}",
        "training.learning_rate=0.0001",
    ]
    config = build_run_config("med_moe_lora", overrides=overrides)
    with caplog.at_level(logging.WARNING, logger="medmoelora.training.monitor"):
        metrics = train(tiny_model_dir, prepared_data_dir, tmp_path, config, callbacks=[Degrade(1)])
    rows = read_log(tmp_path)
    initial = config.adapter
    raised = [float(rows[step]["preservation_weight"]) / initial.preservation_weight for step in (1, 2, 3)]
    assert raised == pytest.approx([2, 4, 8])
    assert metrics["general_probe"]["warned_steps"] == [1, 2, 3] and len(caplog.records) == 3
    assert metrics["loss_weights"] == pytest.approx(
        {
            "balance": initial.balance_weight,
            "preservation": 8 * initial.preservation_weight,
            "base_l2": 8 * initial.base_l2_weight,
        }
    )


def test_multi_lora_probes_general_text_with_its_general_expert():
    adapter = AdapterConfig.from_preset("multi_lora")
    general = adapter.task_index("general_instruct")  # Multi-LoRA's general expert
    assert probe_task_id(adapter, "mmlu") == general  # as lm-eval's medmoe_mmlu routes
    assert probe_task_id(adapter, "gsm8k") == general
    assert probe_task_id(adapter, "general_instruct") == general
    with pytest.raises(UserError, match="no expert for the general probe 'mmlu'"):
        probe_task_id(adapter.replace(eval_task_map={}), "mmlu")
    assert probe_task_id(AdapterConfig.from_preset("med_moe_lora"), "mmlu") == 0  # soft routing ignores it
