"""Typed config values: every common spelling of a good value is accepted and coerced (the other side of the
bad-input tables), and the hand-kept lists stay in step with the libraries they mirror."""

from __future__ import annotations

import math
from typing import Annotated

import pytest
import yaml

from medmoelora.cli import main
from medmoelora.config import AdapterConfig, parse_override
from medmoelora.errors import ConfigError
from medmoelora.training.config import LR_SCHEDULERS, TrainConfig, build_run_config
from medmoelora.validation import Range, coerce, describe
from medmoelora_eval.workflow_config import check_runs
from tests.errors.helpers import REPO


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2e-4", 2e-4),  # YAML 1.1 reads this as a string
        ("2.0e-4", 2e-4),
        ("1E-3", 1e-3),
        (".5", 0.5),
        ("1_000", 1000.0),
        ("3", 3.0),  # an int where a float is meant
        ("' 0.25 '", 0.25),  # a quoted string with spaces
    ],
)
def test_learning_rate_in_every_spelling(text: str, expected: float) -> None:
    config = build_run_config("lora", overrides=[f"training.learning_rate={text}"])
    assert isinstance(config.training.learning_rate, float)
    assert math.isclose(config.training.learning_rate, expected)


@pytest.mark.parametrize(("text", "expected"), [("1e6", 1_000_000), ("1_000", 1000), ("8.0", 8), ("'12'", 12)])
def test_integers_in_every_spelling(text: str, expected: int) -> None:
    config = build_run_config("lora", overrides=[f"training.max_steps={text}"])
    assert config.training.max_steps == expected and type(config.training.max_steps) is int


def test_a_config_file_value_that_yaml_reads_as_a_string_is_a_number() -> None:
    file = yaml.safe_load("training:\n  learning_rate: 2e-4\n  max_examples_per_task: 1e3\nadapter:\n  dropout: 5e-2\n")
    assert file["training"]["learning_rate"] == "2e-4"  # the reason for the coercion
    config = build_run_config("med_moe_lora", file)
    assert config.training.learning_rate == 2e-4 and config.training.max_examples_per_task == 1000
    assert config.adapter.dropout == 0.05


def test_one_rank_is_a_one_entry_list_and_lists_become_tuples() -> None:
    assert AdapterConfig.from_preset("lora", ranks=8).ranks == (8,)
    assert AdapterConfig.from_preset("lora", ranks="16").ranks == (16,)
    config = AdapterConfig.from_preset("med_moe_lora", ranks=[8, "16"], alphas=[16, "3.2e1"])
    assert config.ranks == (8, 16) and config.alphas == (16.0, 32.0)
    assert TrainConfig(tasks="medqa").tasks == ("medqa",)


@pytest.mark.parametrize(("text", "expected"), [("yes", True), ("False", False), ("on", True), ("0", False)])
def test_booleans_in_every_spelling(text: str, expected: bool) -> None:
    key, value = parse_override(f"learn_temperature={text}")
    assert AdapterConfig.from_preset("med_moe_lora", **{key: value}).learn_temperature is expected


@pytest.mark.parametrize("text", ["null", "~", "none", "None"])
def test_null_in_every_spelling(text: str) -> None:
    config = build_run_config("lora", overrides=[f"training.save_total_limit={text}"])
    assert config.training.save_total_limit is None


def test_nested_schedule_values_are_coerced() -> None:
    config = AdapterConfig.from_preset("med_moe_lora", expert_schedule={"max_experts": "1e1", "split_fraction": "0.5"})
    assert config.expert_schedule.max_experts == 10 and config.expert_schedule.split_fraction == 0.5


def test_count_params_reads_a_yaml_string_number(capsys) -> None:
    assert main(["count-params", "--set", "temperature=5e-1", "--json"]) == 0
    assert '"trainable"' in capsys.readouterr().out


def test_the_error_names_field_value_and_what_is_allowed() -> None:
    with pytest.raises(ConfigError) as error:
        coerce("training.warmup_steps", "-1", Annotated[int, Range(ge=0)])
    assert (error.value.field, error.value.value) == ("training.warmup_steps", "-1")
    assert str(error.value) == "config field `training.warmup_steps` = '-1' is invalid: must be an integer >= 0"


@pytest.mark.parametrize(
    ("hint", "words"),
    [
        (Annotated[float, Range(ge=0, lt=1)], "must be a finite number in [0, 1)"),
        (Annotated[float, Range(gt=0)], "must be a finite number > 0"),
        (tuple[Annotated[int, Range(ge=1)], ...], "must be a list of integers >= 1"),
        (Annotated[int, Range(ge=1)] | None, "must be an integer >= 1, or null"),
    ],
)
def test_what_is_allowed_in_words(hint: object, words: str) -> None:
    assert describe(hint) == words


def test_lr_schedulers_are_transformers_own_that_need_no_extra_settings() -> None:
    """`LR_SCHEDULERS` is spelt out (importing transformers.trainer_utils takes seconds); it must be transformers'
    SchedulerType less the schedulers that need an evaluation strategy or lr_scheduler_kwargs."""
    import torch
    from transformers.optimization import get_scheduler
    from transformers.trainer_utils import SchedulerType

    needs_evaluation = {"reduce_lr_on_plateau", "greedy"}
    assert set(LR_SCHEDULERS) <= {kind.value for kind in SchedulerType}
    for kind in SchedulerType:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        try:
            get_scheduler(kind.value, optimizer, num_warmup_steps=1, num_training_steps=10)
            runs_alone = kind.value not in needs_evaluation
        except (TypeError, ValueError):  # needs lr_scheduler_kwargs
            runs_alone = False
        assert (kind.value in LR_SCHEDULERS) == runs_alone, kind.value


def test_the_workflow_accepts_what_train_accepts() -> None:
    """The shipped tiny config, with a YAML-string learning rate and one rank as a scalar, passes the start check."""
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text(encoding="utf-8"))
    config["training"]["learning_rate"] = "2e-4"
    config["runs"]["lora"]["adapter"] = {"ranks": 8}
    check_runs(config)
