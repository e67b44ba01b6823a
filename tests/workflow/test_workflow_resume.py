"""A training job killed after its first checkpoint (a preemption) resumes when Snakemake is rerun, and
ends with the adapter of an uninterrupted run.

One run (lora) of config/tiny.yaml with more steps and a checkpoint every 2, so that there is time to
kill the job between its first checkpoint and its end. About a minute on 2 CPU cores.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.workflow.helpers import RAW_DATA, SNAKEMAKE, snakemake, workflow_copy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not RAW_DATA.is_dir(), reason=f"raw benchmark data not found at {RAW_DATA}"),
]
RUN = Path("results/train/lora/seed0")
ADAPTER = str(RUN / "adapter_model.safetensors")
MAX_STEPS = 40
LONGER = f"training:\n  max_steps: {MAX_STEPS}\n  save_steps: 2\n  save_total_limit: 1\n"
ARGS = ("--configfile", "config/tiny.yaml", "longer.yaml", "--cores", "1")


def training_processes(workdir: Path) -> list[int]:
    """The `medmoelora train` processes running in ``workdir`` (not the shell that started them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone, or not ours to read
            continue
        names = [arg.decode(errors="replace") for arg in argv]
        if cwd == str(workdir) and "train" in names and any(Path(arg).name == "medmoelora" for arg in names):
            found.append(int(entry.name))
    return found


def kill_after_first_checkpoint(workdir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MEDMOE_RAW_DATA=str(RAW_DATA))
    env["PATH"] = f"{SNAKEMAKE.parent}{os.pathsep}{env.get('PATH', '')}"
    job = subprocess.Popen(
        [str(SNAKEMAKE), ADAPTER, *ARGS], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    checkpoints = workdir / RUN / "checkpoints"
    deadline = time.monotonic() + 540
    while not list(checkpoints.glob("checkpoint-*")):
        assert job.poll() is None, job.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    pids = training_processes(workdir)
    assert pids, "the training job ended before it could be killed"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # as a preemption would: no chance to clean up
    output = job.communicate(timeout=120)[0].decode()
    return subprocess.CompletedProcess(job.args, job.returncode, output, "")


def log_steps(workdir: Path) -> list[int]:
    with (workdir / RUN / "train_log.csv").open() as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


def test_a_killed_training_job_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    workdir = workflow_copy(tmp_path / "workflow")
    (workdir / "longer.yaml").write_text(LONGER)

    killed = kill_after_first_checkpoint(workdir)
    assert killed.returncode != 0, killed.stdout[-3000:]
    assert not (workdir / ADAPTER).exists()
    assert list((workdir / RUN / "checkpoints").glob("checkpoint-*")), "Snakemake's cleanup kept the checkpoints"

    resumed = snakemake(workdir, ADAPTER, *ARGS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (workdir / "logs/train/lora/seed0.log").read_text()
    assert "note: resuming from results/train/lora/seed0/checkpoints/checkpoint-" in log, log[-3000:]
    assert log_steps(workdir) == list(range(1, MAX_STEPS + 1)), "every step logged once"
    resumed_adapter = load_file(workdir / ADAPTER)

    shutil.rmtree(workdir / RUN)  # the same job again, uninterrupted
    straight = snakemake(workdir, ADAPTER, *ARGS)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "resuming" not in (workdir / "logs/train/lora/seed0.log").read_text()
    for name, tensor in load_file(workdir / ADAPTER).items():
        torch.testing.assert_close(resumed_adapter[name], tensor, rtol=0, atol=1e-6, msg=name)
