"""Bad inputs to ``lm_eval --model medmoelora`` (the stock CLI, in subprocesses): the suite's own errors
reach the user as one line and a non-zero exit, with no traceback and no output written.

Model-argument mistakes run what the CLI runs for ``--model medmoelora --model_args ...`` before any task
(`tests.lm_eval.helpers.model_load_command`, without the ~10 s of indexing lm-eval's built-in tasks);
mistakes that surface while lm-eval builds tasks or routes requests run the whole CLI. All runs start
together, once per session; each test waits for its own.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from tests.errors.helpers import Case, assert_one_line_failure, edit_json, overwrite, snapshot, truncate
from tests.lm_eval.helpers import FIXTURE_DATA, lm_eval_command, load_base, model_load_command, run_lm_eval


@dataclass(frozen=True)
class Setup:
    """What a case's command line may name: the tiny base model, saved adapters, its own directory."""

    tiny_model: Path
    adapters: dict[str, Path]
    root: Path

    def model(self, name: str, breaks: Callable[[Path], object]) -> Path:
        directory = self.root / name
        shutil.copytree(self.tiny_model, directory)
        breaks(directory)
        return directory

    def adapter(self, name: str, breaks: Callable[[Path], object], source: str = "lora") -> Path:
        directory = self.root / name
        shutil.copytree(self.adapters[source], directory)
        breaks(directory)
        return directory

    def base(self, **extra: object) -> str:
        arguments = {"pretrained": self.tiny_model, "adapter": self.adapters["lora"], "dtype": "float32", **extra}
        return ",".join(f"{key}={value}" for key, value in arguments.items() if value is not None)


@dataclass(frozen=True)
class Run:
    """A case's run: model arguments, and for a whole-CLI run its tasks and prepared-data directory."""

    model_args: str
    tasks: tuple[str, ...] = ()
    data_dir: Path = FIXTURE_DATA


PEFT_CONFIG = '{"peft_type": "LORA", "r": 8}'  # what PEFT's adapter_config.json holds


def _load(model_args: Callable[[Setup], str]) -> Callable[[Setup], Run]:
    return lambda s: Run(model_args(s))


CASES = [
    # The suite's errors raised while lm-eval builds tasks or runs requests: the whole CLI.
    Case(
        "task data missing",
        lambda s: Run(s.base(), ("medmoe_pubmedqa",), data_dir=s.root / "no-data"),
        r"prepared data file .*no-data/pubmedqa/test.jsonl not found: run `medmoelora prepare-data`",
    ),
    Case(
        "MMLU subject without records",
        lambda s: Run(s.base(), ("medmoe_mmlu_virology",)),
        r"no records with subject 'virology' in .*mmlu/test.jsonl: re-run `medmoelora prepare-data`",
    ),
    Case(
        "task without an expert",
        lambda s: Run(s.base(adapter=s.adapters["multi_lora_2"]), ("medmoe_pubmedqa",)),
        r"has no expert for lm-eval task\(s\) medmoe_pubmedqa.*eval_task_map or set fallback_task",
    ),
    # Model arguments: the model is built before any task runs.
    Case("pretrained missing", _load(lambda s: s.base(pretrained=None)), r"needs the base model: .*pretrained=BASE"),
    Case("adapter missing", _load(lambda s: s.base(adapter=None)), r"needs the adapter: .*adapter=DIR"),
    Case("peft given", _load(lambda s: s.base(peft=s.root)), r"takes adapter=DIR, not peft= or delta="),
    Case(
        "adapter directory absent",
        _load(lambda s: s.base(adapter=s.root / "absent")),
        r"adapter directory .*absent does not exist",
    ),
    Case(
        "adapter_config.json not JSON",
        _load(lambda s: s.base(adapter=s.adapter("a", lambda d: overwrite(d / "adapter_config.json", "{")))),
        r"a/adapter_config.json is not valid JSON",
    ),
    Case(
        "a PEFT adapter",
        _load(lambda s: s.base(adapter=s.adapter("a", lambda d: overwrite(d / "adapter_config.json", PEFT_CONFIG)))),
        r"a/adapter_config.json is not a medmoelora-adapter config \(a PEFT adapter",
    ),
    Case(
        "adapter format version",
        _load(lambda s: s.base(adapter=s.adapter("a", lambda d: edit_json(d / "adapter_config.json", _version_99)))),
        r"a/adapter_config.json has format_version 99",
    ),
    Case(
        "adapter_config.json without a required key",
        _load(lambda s: s.base(adapter=s.adapter("a", lambda d: edit_json(d / "adapter_config.json", _drop_layers)))),
        r"a/adapter_config.json lacks the required key 'num_layers'",
    ),
    Case(
        "adapter_config.json with a bad field value",
        _load(lambda s: s.base(adapter=s.adapter("a", lambda d: edit_json(d / "adapter_config.json", _bad_dropout)))),
        r"`dropout` = 'abc' is invalid: must be a finite number in \[0, 1\)",
    ),
    Case(
        "adapter of another base model",
        _load(lambda s: s.base(adapter=s.adapters["other_base"])),
        r"other_base was made for .* decoder layers, but this base model has 4",
    ),
    Case(
        "disable_experts unreadable",
        _load(lambda s: s.base(disable_experts="bse")),
        r"disable_experts=bse: cannot read 'bse'; give none, base, specialists, or L:E terms",
    ),
    Case(
        "disable_experts layer out of range",
        _load(lambda s: s.base(disable_experts="4:0")),
        r"disable_experts=4:0: 4 is out of range; decoder layers are 0-3",
    ),
    Case(
        "disable_experts base without base experts",
        _load(lambda s: s.base(disable_experts="base")),
        r"disable_experts=base: this adapter has no base experts",
    ),
    Case(
        "base model safetensors truncated",
        _load(lambda s: s.base(pretrained=s.model("base", lambda d: truncate(d / "model.safetensors")))),
        r"pretrained=.*base: model.safetensors is truncated or corrupt",
    ),
    Case(
        "base model config.json not JSON",
        _load(lambda s: s.base(pretrained=s.model("base", lambda d: overwrite(d / "config.json", "{")))),
        r"pretrained=.*base: config.json is not valid JSON",
    ),
    Case(
        "base model not a directory, Hub offline",
        _load(lambda s: s.base(pretrained=s.root / "absent")),
        r"pretrained=.*absent is not a local directory and the Hugging Face Hub is offline",
    ),
]


def _version_99(header: dict) -> None:
    header["format_version"] = 99


def _drop_layers(header: dict) -> None:
    del header["num_layers"]


def _bad_dropout(header: dict) -> None:
    header["config"]["dropout"] = "abc"


@pytest.fixture(scope="session")
def saved_adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A LoRA adapter for the tiny model, a Multi-LoRA one with experts for medqa and gsm8k only (no map), and
    a LoRA adapter made for another base model (6 decoder layers, not 4)."""
    from tests.lm_eval.helpers import save_random_adapter
    from tests.tiny import make_tiny_llama

    root = tmp_path_factory.mktemp("adapters")
    two_tasks = {"task_names": ["medqa", "gsm8k"], "eval_task_map": {}, "expert_schedule": {"num_experts": 2}}
    return {
        "lora": save_random_adapter(load_base(tiny_model_dir), root / "lora", "lora"),
        "multi_lora_2": save_random_adapter(load_base(tiny_model_dir), root / "multi", "multi_lora", **two_tasks),
        "other_base": save_random_adapter(make_tiny_llama(), root / "other_base", "lora"),
    }


@pytest.fixture(scope="session")
def lm_eval_runs(
    tiny_model_dir: Path, saved_adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[Path, set[str], Future[CompletedProcess[str]]]]]:
    """case id -> (its directory, the files there before the run, the finished-or-running run)."""
    runs = {}
    with ThreadPoolExecutor(max_workers=3) as pool:
        for number, case in enumerate(CASES):
            root = tmp_path_factory.mktemp(f"lm_eval_case{number}")
            run: Run = case.argv(Setup(tiny_model_dir, saved_adapters, root))
            if run.tasks:
                command = lm_eval_command("medmoelora", run.model_args, run.tasks, root / "out")
            else:
                command = model_load_command(run.model_args)
            runs[case.id] = (root, snapshot(root), pool.submit(run_lm_eval, command, run.data_dir))
        yield runs


@pytest.mark.slow
@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in CASES])
def test_bad_input_fails_in_one_line_and_leaves_nothing(case: Case, lm_eval_runs) -> None:
    root, before, future = lm_eval_runs[case.id]
    result = future.result()
    assert_one_line_failure(case, result.returncode, result.stderr, before, snapshot(root))
