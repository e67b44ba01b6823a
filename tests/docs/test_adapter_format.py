"""docs/adapter-format.md against the code: its key tables are what save_adapter writes, and its reader,
run as written, computes what the layer computes for every routing mode."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from medmoelora import AdapterConfig, inject_adapter, save_adapter
from tests.tiny import TINY_HIDDEN, make_tiny_llama

DOC = Path(__file__).resolve().parents[2] / "docs" / "adapter-format.md"
TASK_ID = 2


def section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_keys(text: str) -> list[list[str]]:
    """The first-column names (`key`) of each markdown table in ``text``."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        match = re.match(r"\| `([^`]+)` \|", line)
        if match:
            current.append(match.group(1))
        elif current:
            tables.append(current)
            current = []
    return tables


def saved(preset: str, tmp_path: Path, **overrides) -> tuple[object, Path]:
    """A tiny model with a random (non-zero) adapter of ``preset``, saved to ``tmp_path``."""
    adapted = inject_adapter(make_tiny_llama(), AdapterConfig.from_preset(preset, **overrides))
    torch.manual_seed(1)
    for layer in adapted.adapter_layers().values():
        for name, parameter in layer.adapter_params().items():
            if name != "log_temperature":
                torch.nn.init.normal_(parameter, std=0.3)
        if layer.log_temperature is not None:
            layer.log_temperature.data.fill_(0.4)  # tau = 1.49, not the default 1
    save_adapter(adapted, tmp_path)
    return adapted, tmp_path


def test_documented_keys_and_tensors_are_what_save_adapter_writes(tmp_path: Path) -> None:
    _, directory = saved("med_moe_lora", tmp_path)
    header = json.loads((directory / "adapter_config.json").read_text())
    top_level, module_entry = table_keys(section("adapter_config.json"))
    assert top_level == list(header)
    assert all(list(entry) == module_entry for entry in header["modules"].values())
    assert set(header["config"]) == set(AdapterConfig().to_dict())
    documented = table_keys(section("adapter_model.safetensors"))[0]
    patterns = [re.escape(name).replace(re.escape("<i>"), r"\d+") for name in documented]  # P.experts.<i>...
    with safe_open(str(directory / "adapter_model.safetensors"), "pt") as weights:
        assert weights.metadata() == {"format": "pt"}
        for key in weights.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
            name = next(key[len(path) + 1 :] for path in header["modules"] if key.startswith(path + "."))
            assert any(re.fullmatch(pattern, f"P.{name}") for pattern in patterns), key
            assert weights.get_slice(key).get_dtype() == "F32"  # float32 experts (the default) and routers


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [("lora", {}), ("multi_lora", {}), ("med_moe_lora", {}), ("med_moe_lora", {"top_k": 1})],
    ids=["none", "task", "soft", "soft-top1"],
)
def test_the_documented_reader_matches_the_layer(preset: str, overrides: dict, tmp_path: Path) -> None:
    code = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    adapted, directory = saved(preset, tmp_path, **overrides)
    x = torch.randn(2, 5, TINY_HIDDEN)
    with torch.no_grad(), adapted.routing(task_ids=[TASK_ID] if preset == "multi_lora" else None):
        for path, layer in list(adapted.adapter_layers().items())[::7]:
            if layer.base_layer.in_features != TINY_HIDDEN:
                continue
            expected = layer(x) - layer.base_layer(x)
            update = namespace["adapter_update"](directory, path, x, task_id=TASK_ID)
            torch.testing.assert_close(update, expected, rtol=1e-4, atol=1e-5)
