"""`medmoelora.atomic`: a failed write leaves the earlier output and nothing else."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from medmoelora import atomic


class Boom(Exception):
    pass


def test_a_file_is_replaced_whole_and_readable(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.json"
    atomic.write_json(target, {"b": 1, "a": [1, 2]}, indent=1, sort_keys=True)
    assert target.read_text() == '{\n "a": [\n  1,\n  2\n ],\n "b": 1\n}\n'
    assert target.stat().st_mode & 0o777 == 0o644
    atomic.write_text(target, "second\n")
    assert target.read_text() == "second\n"
    assert [path.name for path in target.parent.iterdir()] == ["out.json"]


def test_a_failed_write_leaves_the_earlier_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    atomic.write_bytes(target, b"good")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"ha")
        raise Boom

    with pytest.raises(Boom):
        atomic.write_with(target, half_then_fail)
    assert target.read_bytes() == b"good"
    assert list(tmp_path.iterdir()) == [target]


def test_an_os_error_names_the_target_not_its_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"

    def disk_full(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    with pytest.raises(OSError) as raised:
        atomic.write_with(target, disk_full)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_a_directory_is_swapped_in_only_when_complete(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic.replace_directory(out) as staging:
        (staging / "a.txt").write_text("one")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "one" and out.stat().st_mode & 0o777 == 0o755
    with pytest.raises(Boom), atomic.replace_directory(out) as staging:
        (staging / "a.txt").write_text("half")
        raise Boom
    assert (out / "a.txt").read_text() == "one"
    with atomic.replace_directory(out) as staging:
        (staging / "b.txt").write_text("two")
    assert [path.name for path in out.iterdir()] == ["b.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_a_failed_swap_puts_the_earlier_directory_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    with atomic.replace_directory(out) as staging:
        (staging / "a.txt").write_text("one")
    rename = Path.rename

    def fail_for_staging(self: Path, target: Path) -> Path:
        if self.name.endswith(".partial"):
            raise OSError("disk gone")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", fail_for_staging)
    with pytest.raises(OSError, match="disk gone"), atomic.replace_directory(out) as staging:
        (staging / "a.txt").write_text("two")
    assert (out / "a.txt").read_text() == "one"
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_save_adapter_writes_through_it(tmp_path: Path) -> None:
    """Readable by everyone (safetensors alone writes 0600), and nothing else left in the directory."""
    from medmoelora import AdapterConfig, inject_adapter, save_adapter
    from tests.tiny import make_tiny_llama

    save_adapter(inject_adapter(make_tiny_llama(), AdapterConfig.from_preset("lora")), tmp_path)
    written = {path.name: path.stat().st_mode & 0o777 for path in tmp_path.iterdir()}
    assert written == {"adapter_config.json": 0o644, "adapter_model.safetensors": 0o644}
