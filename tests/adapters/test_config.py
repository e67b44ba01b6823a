"""AdapterConfig: presets, schedules, and one-line errors that name the field."""

from __future__ import annotations

import pytest

from medmoelora import PRESETS, AdapterConfig, ConfigError, ExpertSchedule, UserError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid_and_round_trips_through_a_dict(name):
    config = AdapterConfig.from_preset(name)
    assert AdapterConfig.from_dict(config.to_dict()) == config


def test_paper_step_schedule_on_32_layers_matches_the_paper():
    # The paper: N = 2 for l < 2L/3, N = 8 above. 2 * 32 / 3 = 21.33, so layer 21 is the last with 2.
    counts = AdapterConfig.from_preset("paper").experts_per_layer(32)
    assert counts[:22] == [2] * 22
    assert counts[22:] == [8] * 10


def test_inverted_schedule_mirrors_the_step_and_keeps_the_total():
    step = ExpertSchedule(kind="step", min_experts=2, max_experts=8)
    inverted = ExpertSchedule(kind="step", min_experts=2, max_experts=8, inverted=True)
    assert inverted.experts_per_layer(32) == step.experts_per_layer(32)[::-1]
    assert inverted.experts_per_layer(32)[:10] == [8] * 10
    assert sum(inverted.experts_per_layer(32)) == sum(step.experts_per_layer(32))


def test_power_schedule_grows_from_min_to_max_with_curvature():
    linear = ExpertSchedule(kind="power", min_experts=2, max_experts=8, gamma=1.0).experts_per_layer(7)
    assert linear == [2, 3, 4, 5, 6, 7, 8]
    convex = ExpertSchedule(kind="power", min_experts=2, max_experts=8, gamma=3.0).experts_per_layer(7)
    assert convex[0] == 2 and convex[-1] == 8
    assert all(c <= lin for c, lin in zip(convex, linear, strict=True))  # stays small for longer
    assert convex == sorted(convex)


def test_ranks_cycle_over_experts_and_alpha_defaults_to_twice_the_rank():
    config = AdapterConfig.from_preset("paper")
    assert config.expert_ranks(8) == [8, 16, 32, 8, 16, 32, 8, 16]
    assert config.expert_alphas(3) == [16.0, 32.0, 64.0]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ranks": [0]}, "ranks"),
        ({"ranks": [8, -1]}, "ranks"),
        ({"ranks": [8, 16, 32], "expert_schedule": {"kind": "uniform", "num_experts": 2}}, "ranks"),
        ({"top_k": 3, "expert_schedule": {"kind": "step", "min_experts": 2, "max_experts": 8}}, "top_k"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        (
            {"num_base_experts": 2, "expert_schedule": {"kind": "step", "min_experts": 2, "max_experts": 8}},
            "num_base_experts",
        ),
        ({"dropout": 1.5}, "dropout"),
        ({"alphas": [16.0, 32.0, 64.0]}, "alphas"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_field(changes, field):
    with pytest.raises(ConfigError) as error:
        AdapterConfig.from_preset("med_moe_lora", **changes)
    assert error.value.field.startswith(field)
    assert "\n" not in str(error.value)
    assert field in str(error.value)


def test_unknown_preset_suggests_the_nearest():
    with pytest.raises(UserError, match=r"unknown preset 'med_moe_lor'.*Did you mean 'med_moe_lora'"):
        AdapterConfig.from_preset("med_moe_lor")


def test_unknown_target_module_lists_the_valid_ones():
    with pytest.raises(UserError, match=r"target_modules.*'qproj'.*did you mean 'q_proj'"):
        AdapterConfig.from_preset("lora", target_modules=["qproj"])


def test_unknown_field_is_named():
    with pytest.raises(UserError, match=r"unknown AdapterConfig field 'rank'.*Did you mean 'ranks'"):
        AdapterConfig.from_dict({"rank": 8})


def test_task_routing_needs_one_expert_per_task():
    with pytest.raises(ConfigError, match="expert_schedule"):
        AdapterConfig.from_preset("multi_lora", task_names=["medqa", "gsm8k"])
    with pytest.raises(UserError, match="eval_task_map"):
        AdapterConfig.from_preset("multi_lora", eval_task_map={"medmoe_medqa": "nope"})


def test_lora_routing_none_needs_a_single_expert():
    with pytest.raises(ConfigError, match="routing"):
        AdapterConfig.from_preset("lora", expert_schedule={"num_experts": 2})


def test_paper_preset_is_med_moe_lora_at_the_papers_scale():
    """Only the model, the ranks and top-k differ: a change to med_moe_lora reaches the paper preset."""
    paper = AdapterConfig.from_preset("paper").to_dict()
    med_moe_lora = AdapterConfig.from_preset("med_moe_lora").to_dict()
    differing = {key for key in paper if paper[key] != med_moe_lora[key]}
    assert differing == {"base_model", "ranks", "top_k"}
    assert paper["ranks"] == [8, 16, 32] and paper["top_k"] == 2 and paper["method"] == "med_moe_lora"
    assert PRESETS["paper"]["expert_schedule"] is PRESETS["med_moe_lora"]["expert_schedule"]
