"""Parameter accounting on the meta device, checked against counts from the formula."""

from __future__ import annotations

import json
import subprocess
import sys

from medmoelora import AdapterConfig
from medmoelora.cli import main
from medmoelora.params import count_parameters, match_rank
from tests.tiny import TINY_HIDDEN, TINY_INTERMEDIATE, TINY_LAYERS, tiny_llama_config

HEAD_DIM = 8
KV = 2 * HEAD_DIM  # two key/value heads
# (d_in, d_out) of q, k, v, o, gate, up, down in the tiny Llama
SHAPES = [
    (TINY_HIDDEN, TINY_HIDDEN),
    (TINY_HIDDEN, KV),
    (TINY_HIDDEN, KV),
    (TINY_HIDDEN, TINY_HIDDEN),
    (TINY_HIDDEN, TINY_INTERMEDIATE),
    (TINY_HIDDEN, TINY_INTERMEDIATE),
    (TINY_INTERMEDIATE, TINY_HIDDEN),
]
PER_RANK = sum(d_in + d_out for d_in, d_out in SHAPES)  # adapter parameters per unit of rank, one layer
ROUTER_INPUTS = sum(d_in for d_in, _ in SHAPES)  # router parameters per expert, one layer


def test_lora_count_is_rank_times_shapes():
    count = count_parameters(AdapterConfig.from_preset("lora"), tiny_llama_config())
    assert count.trainable == count.active == 16 * PER_RANK * TINY_LAYERS


def test_uniform_moe_counts_experts_and_routers_but_not_a_fixed_temperature():
    count = count_parameters(AdapterConfig.from_preset("uniform_moe"), tiny_llama_config())
    per_layer = 4 * 8 * PER_RANK + 4 * ROUTER_INPUTS
    assert count.trainable == count.active == per_layer * TINY_LAYERS


def test_top_k_active_counts_the_k_largest_experts():
    count = count_parameters(AdapterConfig.from_preset("paper"), tiny_llama_config())
    temperatures = 7  # one learnable tau per module
    low = (8 + 16) * PER_RANK + 2 * ROUTER_INPUTS + temperatures  # layers 0-3: 2 experts, both active
    high_all = (8 + 16 + 32 + 8 + 16 + 32 + 8 + 16) * PER_RANK + 8 * ROUTER_INPUTS + temperatures
    high_active = (32 + 32) * PER_RANK + 8 * ROUTER_INPUTS + temperatures  # top-2: the two rank-32 experts
    assert count.experts_per_layer == [2, 2, 2, 2, 8, 8]
    assert count.trainable == 4 * low + 2 * high_all
    assert count.active == 4 * low + 2 * high_active


def test_count_params_cli_prints_ours_beside_the_papers(capsys):
    assert main(["count-params", "--preset", "paper"]) == 0
    out = capsys.readouterr().out
    assert "llama3-8b" in out and "layers 0-21: 2, layers 22-31: 8" in out
    trainable = next(line for line in out.splitlines() if line.startswith("trainable"))
    active = next(line for line in out.splitlines() if line.startswith("active"))
    assert "88.4M" in trainable and "22.4M" in active


def test_cli_errors_are_one_line_with_exit_status_2():
    result = subprocess.run(
        [sys.executable, "-m", "medmoelora.cli", "count-params", "--preset", "papr"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown preset 'papr'; valid: lora, med_moe_lora, multi_lora, paper, uniform_moe. Did you mean 'paper'?"
    ]
    assert result.stdout == ""


def test_match_rank_finds_the_nearest_rank_on_the_exact_line():
    model_config = tiny_llama_config()
    target = count_parameters(AdapterConfig.from_preset("med_moe_lora"), model_config).trainable
    for preset in ("lora", "uniform_moe"):
        config = AdapterConfig.from_preset(preset)
        match = match_rank(config, target, model_config)

        def trainable(rank: int, config: AdapterConfig = config) -> int:
            return count_parameters(config.replace(ranks=(rank,)), model_config).trainable

        assert match.trainable == trainable(match.rank) and match.target == target
        neighbours = (trainable(match.rank - 1), trainable(match.rank + 1))
        assert all(abs(match.trainable - target) <= abs(count - target) for count in neighbours)
    # lora: rank * PER_RANK per layer, nothing else; the nearest rank to the target by the formula:
    assert match_rank(AdapterConfig.from_preset("lora"), 40 * PER_RANK * TINY_LAYERS + 7, model_config).rank == 40
    assert match_rank(AdapterConfig.from_preset("lora"), 1, model_config).rank == 1  # never below 1


def test_count_params_cli_prints_the_matching_rank(capsys):
    assert main(["count-params", "--preset", "lora", "--match", "med_moe_lora", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    match = report["match"]
    assert match["preset"] == "med_moe_lora" and report["architecture"] == "smollm2-135m"
    assert abs(match["ratio"] - 1) < 0.01 and match["rank"] > 16  # LoRA must grow to match
    assert main(["count-params", "--preset", "lora", "--match", "med_moe_lora"]) == 0
    assert f"ranks=[{match['rank']}]" in capsys.readouterr().out
