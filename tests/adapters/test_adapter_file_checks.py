"""Loading checks adapter_model.safetensors against adapter_config.json before copying anything:
a missing, extra, wrong-shaped or wrong-dtype tensor, a corrupt file or a config lacking a key fails in
one line that names the file and the culprit, never a silent broadcast or a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from medmoelora import AdapterConfig, UserError, inject_adapter, load_adapter, save_adapter
from medmoelora.serialization import CONFIG_FILE, MODULE_KEYS, REQUIRED_KEYS, WEIGHTS_FILE, load_adapter_weights
from tests.tiny import TINY_HIDDEN, make_tiny_llama, randomize_adapter

MODULE = "model.layers.5.mlp.down_proj"  # med_moe_lora, a top layer: 8 experts, ranks 8, 16, 8, 16, ...
D_IN = 48  # down_proj: intermediate -> hidden


@pytest.fixture
def saved(tmp_path) -> Path:
    adapted = inject_adapter(make_tiny_llama(), AdapterConfig.from_preset("med_moe_lora"))
    randomize_adapter(adapted)
    return save_adapter(adapted, tmp_path / "adapter")


def edit_tensors(directory: Path, edit) -> None:
    tensors = load_file(directory / WEIGHTS_FILE)
    edit(tensors)
    save_file(tensors, directory / WEIGHTS_FILE)


def edit_config(directory: Path, edit) -> None:
    header = json.loads((directory / CONFIG_FILE).read_text())
    edit(header)
    (directory / CONFIG_FILE).write_text(json.dumps(header))


def load_error(directory: Path) -> str:
    with pytest.raises(UserError) as error:
        load_adapter(make_tiny_llama(), directory)
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_an_expert_cut_to_one_row_does_not_load(saved):
    # copy_ would broadcast the one row over all 8 rows of the expert: wrong weights, no error.
    edit_tensors(saved, lambda t: t.update({f"{MODULE}.experts.2.lora_A": t[f"{MODULE}.experts.2.lora_A"][:1]}))
    message = load_error(saved)
    assert f"{saved / WEIGHTS_FILE} has tensor {MODULE}.experts.2.lora_A as shape [1, {D_IN}] float32" in message
    assert f"{CONFIG_FILE} declares shape [8, {D_IN}] float32" in message
    assert "re-save the adapter" in message


@pytest.mark.parametrize(
    ("name", "replacement", "found", "declared"),
    [
        ("router.log_temperature", torch.zeros(1), "shape [1] float32", "shape [] float32"),  # would broadcast
        ("router.weight", torch.zeros(8, D_IN, dtype=torch.float16), "float16", f"shape [8, {D_IN}] float32"),
        ("experts.0.lora_B", torch.zeros(TINY_HIDDEN, 8, dtype=torch.float64), "float64", "float32"),
        ("experts.7.lora_B", torch.zeros(TINY_HIDDEN, 8), f"shape [{TINY_HIDDEN}, 8]", f"[{TINY_HIDDEN}, 16]"),
    ],
)
def test_a_tensor_of_another_shape_or_dtype_does_not_load(saved, name, replacement, found, declared):
    edit_tensors(saved, lambda t: t.update({f"{MODULE}.{name}": replacement}))
    message = load_error(saved)
    assert f"{MODULE}.{name} as " in message and found in message and declared in message


def test_a_missing_tensor_does_not_load(saved):
    edit_tensors(saved, lambda t: t.pop(f"{MODULE}.experts.3.lora_B"))
    message = load_error(saved)
    assert f"lacks tensor {MODULE}.experts.3.lora_B (shape [{TINY_HIDDEN}, 16] float32)" in message


def test_an_extra_tensor_does_not_load(saved):
    edit_tensors(saved, lambda t: t.update({f"{MODULE}.experts.8.lora_A": torch.zeros(8, D_IN)}))
    assert f"has tensor {MODULE}.experts.8.lora_A, which {CONFIG_FILE} does not declare" in load_error(saved)


def test_every_culprit_is_counted_in_the_one_line(saved):
    def edit(tensors):
        tensors.pop(f"{MODULE}.experts.3.lora_B")
        tensors.pop(f"{MODULE}.experts.4.lora_B")
        tensors["unexpected"] = torch.zeros(1)

    edit_tensors(saved, edit)
    assert "(and 2 more mismatched tensors)" in load_error(saved)


def test_resuming_into_an_injected_model_checks_the_same_way(saved):
    edit_tensors(saved, lambda t: t.update({f"{MODULE}.experts.2.lora_A": t[f"{MODULE}.experts.2.lora_A"][:1]}))
    adapted = inject_adapter(make_tiny_llama(), AdapterConfig.from_preset("med_moe_lora"))
    before = {name: p.clone() for name, p in adapted.named_parameters()}
    with pytest.raises(UserError, match=r"experts\.2\.lora_A as shape \[1, 48\]"):
        load_adapter_weights(adapted, saved)
    assert all(torch.equal(p, before[name]) for name, p in adapted.named_parameters()), "copied before checking"


@pytest.mark.parametrize("keep", [0, 7, 100, 0.5, -8])
def test_a_truncated_or_corrupt_weights_file_fails_in_one_line(saved, keep):
    data = (saved / WEIGHTS_FILE).read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    (saved / WEIGHTS_FILE).write_bytes(data[:cut])
    message = load_error(saved)
    assert f"{saved / WEIGHTS_FILE} is not a readable safetensors file" in message


def test_a_weights_file_of_garbage_fails_in_one_line(saved):
    (saved / WEIGHTS_FILE).write_bytes(b"\xff" * 64 + b"not safetensors")
    assert "is not a readable safetensors file" in load_error(saved)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"format": "medmoelora-adapter", ', "is not valid JSON"),  # truncated
        (b"\xff\xfe not text", "is not valid JSON (not UTF-8 text)"),
        (b"[1, 2]", "holds a JSON list, not an object"),
        (b"", "is not valid JSON"),
    ],
)
def test_a_config_that_is_not_a_json_object_fails_in_one_line(saved, content, message):
    (saved / CONFIG_FILE).write_bytes(content)
    found = load_error(saved)
    assert str(saved / CONFIG_FILE) in found and message in found


@pytest.mark.parametrize("key", [key for key in REQUIRED_KEYS if not key.startswith("format")])
def test_a_config_lacking_a_required_key_fails_in_one_line(saved, key):
    edit_config(saved, lambda header: header.pop(key))
    assert f"{saved / CONFIG_FILE} lacks the required key {key!r}" in load_error(saved)


@pytest.mark.parametrize("key", MODULE_KEYS)
def test_a_module_entry_lacking_a_key_fails_in_one_line(saved, key):
    edit_config(saved, lambda header: header["modules"][MODULE].pop(key))
    assert f"modules[{MODULE!r}] lacks the required key {key!r}" in load_error(saved)


def test_module_entries_that_contradict_the_config_fail_in_one_line(saved):
    edit_config(saved, lambda header: header["modules"][MODULE].update(ranks=[8] * 8))
    assert f"modules[{MODULE!r}].ranks is [8, 8, 8, 8, 8, 8, 8, 8]" in load_error(saved)
    edit_config(saved, lambda header: header["modules"].pop(MODULE))
    assert f"does not list module {MODULE}" in load_error(saved)


def test_an_adapter_saved_before_module_dtypes_were_recorded_still_loads(saved):
    reference = load_adapter(make_tiny_llama(), saved)
    edit_config(saved, lambda header: [spec.pop("dtype") for spec in header["modules"].values()])
    loaded = load_adapter(make_tiny_llama(), saved)
    original = dict(reference.named_parameters())
    assert all(torch.equal(p, original[name]) for name, p in loaded.named_parameters())


def test_the_module_spec_records_the_experts_dtype(saved):
    header = json.loads((saved / CONFIG_FILE).read_text())
    assert {spec["dtype"] for spec in header["modules"].values()} == {"float32"}


@pytest.mark.slow
def test_lm_eval_refuses_the_cut_adapter_in_one_line(tiny_model_dir, tmp_path):
    # The reported case: `lm_eval --model medmoelora` loaded it and exited 0 with wrong weights.
    from tests.lm_eval.helpers import last_line, load_base, model_load_command, run_lm_eval, save_random_adapter

    adapter = save_random_adapter(load_base(tiny_model_dir), tmp_path / "adapter", "med_moe_lora")
    name = "model.layers.0.self_attn.q_proj.experts.1.lora_A"
    edit_tensors(adapter, lambda t: t.update({name: t[name][:1]}))
    run = run_lm_eval(model_load_command(f"pretrained={tiny_model_dir},dtype=float32,adapter={adapter}"))
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert last_line(run.stderr).startswith(f"error: {adapter / WEIGHTS_FILE} has tensor {name} as shape [1, ")
