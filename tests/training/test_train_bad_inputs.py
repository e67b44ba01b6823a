"""`medmoelora train` against the operating system and corrupt checkpoint files: each a one-line error
naming the file and what to do, exit status 2, no traceback, and nothing new left behind."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from medmoelora.cli import main
from tests.training.helpers import cli, one_error_line, snapshot

CHECKPOINT = Path("checkpoints") / "checkpoint-3"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def overwrite_with(text: str):
    return lambda path: path.write_text(text)


@pytest.mark.parametrize(
    ("name", "damage", "says"),
    [
        ("adapter_model.safetensors", truncate, "is corrupt or truncated"),
        ("adapter_model.safetensors", overwrite_with("garbage"), "is corrupt or truncated"),
        ("adapter_config.json", overwrite_with("{not json"), "is not valid JSON"),
        ("optimizer.pt", truncate, "is corrupt or truncated"),
        ("scheduler.pt", overwrite_with(""), "is corrupt or truncated"),
        ("rng_state.pth", truncate, "is corrupt or truncated"),
        ("trainer_state.json", overwrite_with("{not json"), "is not a valid trainer_state.json"),
        ("trainer_state.json", overwrite_with('{"no_such_field": 1}'), "is not a valid trainer_state.json"),
        ("train_config.json", overwrite_with("[1, 2"), "is not a valid train_config.json"),
        ("train_progress.json", overwrite_with(""), "is not a valid train_progress.json"),
    ],
)
def test_resume_from_a_corrupt_checkpoint_fails_in_one_line(
    name, damage, says, stopped_copy, tiny_model_dir, prepared_data_dir, capsys
):
    damage(stopped_copy / CHECKPOINT / name)
    before = snapshot(stopped_copy)
    assert main(cli(tiny_model_dir, prepared_data_dir, stopped_copy, "--resume")) == 2
    error = one_error_line(capsys)
    assert f"{stopped_copy / CHECKPOINT / name} {says}" in error, error
    assert f"delete {stopped_copy / CHECKPOINT} to resume from an earlier checkpoint" in error, error
    assert snapshot(stopped_copy) == before


def test_resume_if_possible_starts_afresh_from_a_corrupt_checkpoint(
    stopped_copy, tiny_model_dir, prepared_data_dir, capsys
):
    truncate(stopped_copy / CHECKPOINT / "optimizer.pt")
    assert main(cli(tiny_model_dir, prepared_data_dir, stopped_copy, "--resume-if-possible")) == 0
    assert "note: starting afresh:" in capsys.readouterr().err


def test_out_that_is_a_file(tmp_path, tiny_model_dir, prepared_data_dir, capsys):
    out = tmp_path / "run"
    out.write_text("not a directory")
    assert main(cli(tiny_model_dir, prepared_data_dir, out)) == 2
    assert f"--out {out} is a file, not a directory" in one_error_line(capsys)
    assert out.read_text() == "not a directory" and sorted(tmp_path.iterdir()) == [out]


def test_out_whose_parent_is_not_writable(tmp_path, tiny_model_dir, prepared_data_dir, monkeypatch, capsys):
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):  # what the kernel says when not running as root
        if Path(path).parent == parent:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    assert main(cli(tiny_model_dir, prepared_data_dir, parent / "run")) == 2
    error = one_error_line(capsys)
    assert f"{parent / 'run'}: Permission denied; choose an --out you can write to" in error, error
    assert list(parent.iterdir()) == []


def test_disk_full_while_writing_the_adapter(tmp_path, tiny_model_dir, prepared_data_dir, monkeypatch, capsys):
    """The last save fails: one line; the checkpoints stay to resume from, no adapter or metrics appear."""
    from safetensors import SafetensorError

    import medmoelora.serialization as serialization

    def save_file(tensors, filename, metadata=None):
        if "checkpoint" not in str(filename):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save_file(tensors, filename, metadata=metadata)

    real_save_file = serialization.save_file
    monkeypatch.setattr(serialization, "save_file", save_file)
    out = tmp_path / "run"
    assert main(cli(tiny_model_dir, prepared_data_dir, out)) == 2
    error = one_error_line(capsys)
    assert f"could not write the adapter into {out}" in error and "--resume" in error, error
    assert sorted(path.name for path in out.iterdir()) == ["checkpoints", "train_log.csv"]


def test_disk_full_while_writing_a_json_file(tmp_path, tiny_model_dir, prepared_data_dir, monkeypatch, capsys):
    real_replace = os.replace

    def replace(source, target):
        if str(target).endswith("train_metrics.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(source))
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "run"
    assert main(cli(tiny_model_dir, prepared_data_dir, out)) == 2
    error = one_error_line(capsys)
    assert f"{out / 'train_metrics.json'}: No space left on device; free disk space" in error, error
    assert "continue from" in error and "checkpoint-6 with --resume" in error, error
    assert not (out / "train_metrics.json").exists() and not list(out.glob(".*.tmp"))
    shutil.rmtree(out)
