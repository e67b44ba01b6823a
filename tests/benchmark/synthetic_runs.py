"""Synthetic workflow results: per-document eval results (tests/stats/synthetic.py) plus what training
writes per seed (train_metrics.json, adapter_config.json, adapter_model.safetensors, routing_stats.json),
in the workflow's layout: results/eval/<run>/seed<k>/, results/train/<run>/seed<k>/, results/eval/base/."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from tests.stats.synthetic import routing_stats, write_run

TASKS = ("medqa", "pubmedqa", "mmlu", "gsm8k", "general_text")
LAYERS = 3


def write_eval(eval_dir: Path, run: str, medical: float, general: float, seeds: list[int] | None) -> None:
    """The run's per-document results; the synthetic rolling-loglikelihood task becomes general_lm."""
    write_run(eval_dir, run, medical, general, seeds=seeds, tasks=TASKS)
    for directory in [eval_dir / run] if seeds is None else [eval_dir / run / f"seed{s}" for s in seeds]:
        shutil.move(directory / "general_text.samples.jsonl", directory / "general_lm.samples.jsonl")


def write_train(
    train_dir: Path,
    run: str,
    seeds: list[int],
    trainable: int = 1000,
    taus: tuple[float, ...] = (1.0, 2.0),
    largest_share: float = 0.6,
    heldout: dict | None = None,
) -> None:
    """What `medmoelora train` writes for each seed; seed k's timings are k + 1 and its taus are
    ``taus`` times (k + 1), so that means over seeds are known. ``taus=()``: no router (LoRA), nothing routed."""
    for seed in seeds:
        out = train_dir / run / f"seed{seed}"
        out.mkdir(parents=True)
        metrics = {"trainable_params": trainable, "active_params": trainable // 2, "tokens_per_second": seed + 1.0,
                   "peak_memory_mb": 10.0 * (seed + 1), "wall_time_s": 60.0 * (seed + 1)}  # fmt: skip
        if heldout is not None:
            metrics["heldout"] = heldout
        (out / "train_metrics.json").write_text(json.dumps(metrics))
        modules = {f"model.layers.{layer}.mlp.up_proj": {"layer": layer, "num_experts": 2 + 2 * layer}
                   for layer in range(LAYERS)}  # fmt: skip
        (out / "adapter_config.json").write_text(json.dumps({"modules": modules}))
        tensors = {
            f"model.layers.{layer}.mlp.up_proj.router.log_temperature": np.array(math.log(tau * (seed + 1)), "float32")
            for layer, tau in enumerate(taus)
        }
        save_file(tensors, str(out / "adapter_model.safetensors"))
        rest = (1 - largest_share) / 2
        shares = {f"model.layers.{layer}.mlp.up_proj": [largest_share - 0.1 * layer, rest, rest + 0.1 * layer]
                  for layer in range(LAYERS)}  # fmt: skip
        stats = routing_stats(shares) if taus else {"by_task": {}, "overall": {"layers": {}, "modules": {}}}
        if heldout is not None and taus:  # a run of the training that also records the base experts' share
            stats["base_expert_share"] = {
                "layers": {str(layer): {"general": 0.5 + 0.1 * seed, "medical": 0.2} for layer in range(LAYERS)}
            }
        (out / "routing_stats.json").write_text(json.dumps(stats))
