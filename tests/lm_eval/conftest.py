"""Session fixtures for the lm-eval tests: saved adapters on the tiny model, and the CLI runs.

Every stock ``lm_eval`` run costs ~15 s of start-up (imports, indexing lm-eval's built-in tasks), so
the runs start together, once per session, and each test waits for the one it checks. The
wrong-base-model check loads the model the way the CLI does, without the CLI's task indexing.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from tests.lm_eval.helpers import (
    lm_eval_command,
    load_base,
    model_load_command,
    reference_lm,
    run_lm_eval,
    save_random_adapter,
)
from tests.tiny import make_tiny_llama

GENERATION = ("--num_fewshot", "0", "--gen_kwargs", "max_gen_toks=8")


@pytest.fixture(scope="session")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Randomised adapters for the tiny model (one per preset), its LoRA's PEFT export, and one adapter made
    for another base model."""
    from medmoelora import export_peft, load_adapter

    root = tmp_path_factory.mktemp("adapters")
    saved = {
        preset: save_random_adapter(load_base(tiny_model_dir), root / preset, preset)
        for preset in ("lora", "multi_lora", "med_moe_lora")
    }
    saved["peft"] = export_peft(load_adapter(load_base(tiny_model_dir), saved["lora"]), root / "peft")
    saved["wrong_base"] = save_random_adapter(make_tiny_llama(), root / "wrong_base", "lora")
    return saved


@pytest.fixture(scope="session")
def multi_lora_reference(tiny_model_dir: Path, adapters: dict[str, Path]) -> tuple[Any, Any]:
    """(adapted model, stock HFLM around it, one sequence a batch) for the Multi-LoRA adapter: a direct
    computation, expert by expert, inside ``adapted.routing(task_ids=[i])``."""
    from medmoelora import load_adapter

    adapted = load_adapter(load_base(tiny_model_dir), adapters["multi_lora"])
    return adapted, reference_lm(adapted.model, tiny_model_dir)


@pytest.fixture(scope="session")
def multi_lora_lm(tiny_model_dir: Path, adapters: dict[str, Path]) -> Any:
    """`MedMoELoRALM` with the Multi-LoRA adapter, two sequences a batch."""
    from medmoelora_eval.lm_model import MedMoELoRALM

    return MedMoELoRALM(
        pretrained=str(tiny_model_dir), adapter=str(adapters["multi_lora"]), device="cpu", dtype="float32", batch_size=2
    )


@pytest.fixture(scope="session")
def cli_runs(
    tiny_model_dir: Path, adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[Path, Future[CompletedProcess[str]]]]]:
    """name -> (output dir, the finished-or-running CLI run)."""
    base = f"pretrained={tiny_model_dir},dtype=float32"
    root = tmp_path_factory.mktemp("lm_eval")
    commands = {
        "multi_lora": ("medmoelora", f"{base},adapter={adapters['multi_lora']}", ["medmoe_pubmedqa", "medmoe_gsm8k"]),
        "lora": ("medmoelora", f"{base},adapter={adapters['lora']}", ["medmoe_pubmedqa"]),
        "peft": ("hf", f"{base},peft={adapters['peft']}", ["medmoe_pubmedqa"]),
        "bad_path": ("medmoelora", f"{base},adapter={root / 'no_such_adapter'}", ["medmoe_pubmedqa"]),
    }
    with ThreadPoolExecutor(max_workers=len(commands) + 1) as pool:
        runs = {}
        for name, (model, model_args, tasks) in commands.items():
            command = lm_eval_command(model, model_args, tasks, root / name, "--log_samples", *GENERATION)
            runs[name] = (root / name, pool.submit(run_lm_eval, command))
        wrong_base = model_load_command(f"{base},adapter={adapters['wrong_base']}")
        runs["wrong_base"] = (root / "wrong_base", pool.submit(run_lm_eval, wrong_base))
        yield runs
