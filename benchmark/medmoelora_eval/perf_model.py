"""End-to-end benchmark on a real model: training steps against plain LoRA, evaluation against the base.

- training: one optimizer step (forward, backward, AdamW) of each method on the same fixed batch;
  reported as time relative to the `lora` preset's step, paired per repetition;
- evaluation: one forward pass (no grad) of each adapted model against the untouched base model,
  i.e. the throughput ratio of ``--model medmoelora`` to ``--model hf`` on the same requests;
- the floor: the FLOPs each adapter adds per token over the base model's, computed from the shapes,
  beside the measured overhead (measured / predicted);
- the reference: PEFT's own LoRA at the `lora` preset's rank, alpha and modules (``peft_lora``), trained
  and evaluated beside the methods, so that our plain LoRA's cost reads against the field's;
- the path users run: lm-eval's own ``loglikelihood`` on the same requests through ``--model hf`` (HFLM on
  the base model) and ``--model medmoelora`` with each method's adapter (merged where the update is the
  same for every token), against a plain forward pass of the base model over the very batches HFLM
  builds from those requests (the machine's limit: what is left once request handling is free). The
  medmoelora model type computes logits only at scored positions (`medmoelora_eval.scored_logits`), which
  HFLM does not; the base model in that same loop (``hf_scored``) separates the adapter's own cost from it.

    python -m medmoelora_eval.perf_model --model resources/models/smollm2-135m --out results/perf/model.csv \
        --lm-eval-out results/perf/lm_eval.csv
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import AutoModelForCausalLM

from medmoelora import AdapterConfig, MoELoRAModel, atomic, inject_adapter, save_adapter
from medmoelora.config import METHODS
from medmoelora.errors import UserError, command_main
from medmoelora.tasks import EVAL_PUBMEDQA
from medmoelora_eval.timing import median_interval, median_ratio, paired, paired_ratios, require_counts

SEQUENCES, LENGTH = 2, 256  # 512 tokens a step: long enough for stable timings, short enough for a laptop
# lm-eval requests: PubMedQA-like (a long context, a one-word answer), as many as two batches of 8 hold
REQUESTS, REQUEST_BATCH, CONTEXT_WORDS = 16, 8, (120, 200)
REQUEST_TASK = EVAL_PUBMEDQA  # requests named after its lm-eval task: Multi-LoRA routes them to its expert


def linear_flops_per_token(model: torch.nn.Module) -> float:
    """2 FLOPs per weight of every linear layer (lm_head included): a token's matmul cost."""
    return 2.0 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def attention_flops_per_token(config: object, length: int) -> float:
    """Scores and weighted values: 2 * 2 * T * d per layer for a token attending to T/2 on average."""
    return 2.0 * 2.0 * (length / 2) * config.hidden_size * config.num_hidden_layers


def adapter_flops_per_token(adapted: MoELoRAModel) -> float:
    """Experts (x A^T, then B) and routers, forward, per token."""
    total = 0.0
    for layer in adapted.adapter_layers().values():
        d_in, d_out = layer.base_layer.in_features, layer.base_layer.out_features
        total += 2.0 * sum(layer.ranks) * (d_in + d_out)
        if layer.router is not None:
            total += 2.0 * layer.num_experts * d_in
    return total


PEFT_LORA = "peft_lora"  # the row of PEFT's own LoRA


def peft_flops_per_token(model: torch.nn.Module) -> float:
    """The same count for PEFT's LoRA layers: 2 r (d_in + d_out) per adapted module, forward, per token."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    return sum(2.0 * rank * (m.in_features + m.out_features) for m in layers for rank in m.r.values())


def load_peft_lora(model_dir: Path) -> torch.nn.Module:
    """PEFT's LoRA on the base model, as the `lora` preset configures ours (rank, alpha, modules, dropout)."""
    from peft import LoraConfig, get_peft_model

    preset = AdapterConfig.from_preset("lora")
    (rank,) = preset.ranks
    alpha = preset.alphas[0] if preset.alphas else 2.0 * rank  # the preset's default: 2 * rank
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(preset.target_modules), lora_dropout=preset.dropout
    )
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), config)
    _randomize_lora_B(model)
    return model


def _randomize_lora_B(model: torch.nn.Module) -> None:
    """Non-zero B: an adapter that does something (timing does not depend on values)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and ("lora_B" in name or name.endswith("_B")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.01)


def load(model_dir: Path, method: str | None) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if method is None:
        return model.eval()
    adapted = inject_adapter(model, AdapterConfig.from_preset(method))
    _randomize_lora_B(adapted)
    return adapted


def fixed_batch(vocab_size: int, adapted: torch.nn.Module) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab_size, (SEQUENCES, LENGTH), generator=generator)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if isinstance(adapted, MoELoRAModel):
        batch["task_ids"] = torch.arange(SEQUENCES) % max(1, len(adapted.adapter_config.task_names))
        batch["domain_labels"] = torch.arange(SEQUENCES) % 2
    return batch


def train_step(adapted: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], float]:
    if isinstance(adapted, MoELoRAModel):
        optimizer = torch.optim.AdamW(adapted.parameter_groups(1e-4))
    else:  # PEFT's LoRA: its trainable parameters
        optimizer = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=1e-4)
    adapted.train()

    def step() -> float:
        started = time.perf_counter()
        adapted(**batch, labels=batch["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    return step


def eval_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], float]:
    model.eval()
    if isinstance(model, MoELoRAModel):
        model.cache_fused_weights()  # as `--model medmoelora` evaluates
    inputs = dict(batch) if isinstance(model, MoELoRAModel) else {k: batch[k] for k in ("input_ids", "attention_mask")}

    @torch.no_grad()
    def step() -> float:
        started = time.perf_counter()
        model(**inputs)
        return time.perf_counter() - started

    return step


# ---- the path users run: lm-eval's loglikelihood --------------------------------------------------------
def synthetic_requests(count: int = REQUESTS) -> list[Any]:
    """PubMedQA-shaped loglikelihood requests (a context of 120-200 words, " yes" / " no" / " maybe"), made
    from a fixed word list so that the benchmark needs no prepared data; timing depends on lengths only."""
    from lm_eval.api.instance import Instance

    words = __doc__.split()  # any fixed English text: this module's docstring
    generator = torch.Generator().manual_seed(0)
    requests = []
    for doc_id in range(count):
        length = int(torch.randint(*CONTEXT_WORDS, (1,), generator=generator))
        picks = torch.randint(0, len(words), (length,), generator=generator).tolist()
        context = "Context: " + " ".join(words[i] for i in picks) + "\nAnswer:"
        arguments = (context, (" yes", " no", " maybe")[doc_id % 3])
        doc = {"task_id": REQUEST_TASK.routing_task.name}
        metadata = (REQUEST_TASK.lm_eval_task, doc_id, 1)
        requests.append(Instance("loglikelihood", doc=doc, arguments=arguments, idx=0, metadata=metadata))
    return requests


def lm_step(lm: Any, requests: list[Any]) -> Callable[[], float]:
    """One ``loglikelihood`` call over every request: the request phase of an lm-eval run."""

    def step() -> float:
        started = time.perf_counter()
        lm.loglikelihood(requests, disable_tqdm=True)
        return time.perf_counter() - started

    return step


def request_batches(lm: Any, requests: list[Any]) -> tuple[list[torch.Tensor], int]:
    """The input batches HFLM's loglikelihood feeds the model for ``requests`` (context + continuation minus
    its last token, longest first, right-padded, ``batch_size`` a batch) and their number of real tokens."""
    sequences = []
    for request in requests:
        context, continuation = lm._encode_pair(*request.args)
        sequences.append(torch.tensor((context + continuation)[-(lm.max_length + 1) :][:-1]))
    sequences.sort(key=len, reverse=True)
    batches = [
        torch.nn.utils.rnn.pad_sequence(sequences[start : start + lm.batch_size], batch_first=True)
        for start in range(0, len(sequences), lm.batch_size)
    ]
    return batches, sum(len(sequence) for sequence in sequences)


def floor_step(model: torch.nn.Module, batches: list[torch.Tensor]) -> Callable[[], float]:
    """The same model forwards HFLM makes (``model(inps).logits``), with nothing around them."""

    @torch.no_grad()
    def step() -> float:
        started = time.perf_counter()
        for batch in batches:
            model(batch)  # logits over the vocabulary included, as in HFLM
        return time.perf_counter() - started

    return step


def run_lm_eval(
    model_dir: Path, adapted: dict[str, MoELoRAModel], count: int, repeats: int, warmup: int
) -> pd.DataFrame:
    """Throughput of ``loglikelihood`` through ``--model hf`` and ``--model medmoelora`` (each method),
    and of the plain forward passes underneath (the floor), interleaved."""
    from lm_eval.models.huggingface import HFLM

    from medmoelora_eval.lm_model import MedMoELoRALM
    from medmoelora_eval.scored_logits import ScoredLogitsLM

    options = {"pretrained": str(model_dir), "device": "cpu", "dtype": "float32", "batch_size": REQUEST_BATCH}
    requests = synthetic_requests(count)
    hf = HFLM(**options)
    batches, tokens = request_batches(hf, requests)
    timers = {"floor": floor_step(hf.model, batches), "hf": lm_step(hf, requests)}
    # The base model in --model medmoelora's request loop (LM head at the scored positions only): against it,
    # an adapter's ratio is its own cost, apart from what that loop saves over HFLM's.
    timers["hf_scored"] = lm_step(ScoredLogitsLM(**options), requests)
    lms = {}
    with tempfile.TemporaryDirectory() as scratch:
        for method, model in adapted.items():
            adapter = save_adapter(model, Path(scratch) / method)
            lms[method] = MedMoELoRALM(adapter=str(adapter), **options)
            timers[method] = lm_step(lms[method], requests)
    print(f"lm-eval loglikelihood, {len(requests)} requests ({tokens} tokens), {repeats} repetitions ...", flush=True)
    samples = paired(timers, repeats, warmup)
    rows = []
    for path in timers:
        seconds = statistics.median(samples[path])
        time_low, time_high, coverage = median_interval(paired_ratios(samples, path, "hf"))  # time / --model hf's
        rows.append(
            {
                "path": path,
                "merged": bool(getattr(lms.get(path), "merge", False)),
                "requests": len(requests),
                "tokens": tokens,
                "seconds": seconds,
                "tokens_per_s": tokens / seconds,
                "throughput_over_hf": 1.0 / median_ratio(samples, path, "hf"),
                "throughput_over_hf_low": 1.0 / time_high,
                "throughput_over_hf_high": 1.0 / time_low,
                "interval_coverage": coverage,
                "throughput_over_floor": 1.0 / median_ratio(samples, path, "floor"),
                "throughput_over_hf_scored": 1.0 / median_ratio(samples, path, "hf_scored"),
                "repeats": repeats,
            }
        )
        row = rows[-1]
        print(
            f"{path:13s} {row['tokens_per_s']:7.1f} tokens/s, {row['throughput_over_hf']:.3f}x --model hf, "
            f"{row['throughput_over_floor']:.3f}x the plain forward, {row['throughput_over_hf_scored']:.3f}x the base "
            "in the scored-logits loop",
            flush=True,
        )
    return pd.DataFrame(rows)


# ---- all of it -------------------------------------------------------------------------------------------
def run(
    model_dir: Path, adapted: dict[str, MoELoRAModel], repeats: int, warmup: int, peft_lora: torch.nn.Module | None
) -> pd.DataFrame:
    """Training steps against LoRA's and forward passes against the base model's, with their FLOPs; PEFT's
    LoRA (``peft_lora``, unless None) beside the methods as the reference."""
    base = load(model_dir, None)
    batch = fixed_batch(base.config.vocab_size, base)
    adapted = {**adapted, PEFT_LORA: peft_lora} if peft_lora is not None else adapted
    batches = {method: fixed_batch(base.config.vocab_size, model) for method, model in adapted.items()}
    base_flops = linear_flops_per_token(base) + attention_flops_per_token(base.config, LENGTH)
    tokens = SEQUENCES * LENGTH

    print(f"training steps ({tokens} tokens each), {repeats} paired repetitions ...", flush=True)
    train = paired({m: train_step(model, batches[m]) for m, model in adapted.items()}, repeats, warmup)
    print("evaluation forward passes ...", flush=True)
    evaluation = paired(
        {"base": eval_step(base, batch), **{m: eval_step(model, batches[m]) for m, model in adapted.items()}},
        repeats,
        warmup,
    )
    rows = []
    for method, model in adapted.items():
        flops = adapter_flops_per_token(model) if isinstance(model, MoELoRAModel) else peft_flops_per_token(model)
        predicted = flops / base_flops
        measured = median_ratio(evaluation, method, "base") - 1.0
        # per repetition, (forward / base - 1) / predicted: its median is measured / predicted, as the order
        # statistics of a monotone transform are the transformed order statistics
        overhead_low, overhead_high, coverage = median_interval(
            [(ratio - 1.0) / predicted for ratio in paired_ratios(evaluation, method, "base")]
        )
        train_low, train_high, _ = median_interval(paired_ratios(train, method, "lora"))
        rows.append(
            {
                "method": method,
                "train_step_s": statistics.median(train[method]),
                "train_tokens_per_s": tokens / statistics.median(train[method]),
                "train_step_over_lora": median_ratio(train, method, "lora"),
                "train_step_over_lora_low": train_low,
                "train_step_over_lora_high": train_high,
                "eval_forward_s": statistics.median(evaluation[method]),
                "eval_tokens_per_s": tokens / statistics.median(evaluation[method]),
                "eval_throughput_over_base": 1.0 / median_ratio(evaluation, method, "base"),
                "adapter_gflops_per_token": flops / 1e9,
                "base_gflops_per_token": base_flops / 1e9,
                "predicted_overhead": predicted,
                "measured_overhead": measured,
                "measured_over_predicted": measured / predicted if predicted > 0 else float("nan"),
                "measured_over_predicted_low": overhead_low,
                "measured_over_predicted_high": overhead_high,
                "interval_coverage": coverage,  # of every _low / _high pair: the median's, over the repetitions
                "repeats": repeats,
            }
        )
        row = rows[-1]
        print(
            f"{method:13s} train {row['train_step_over_lora']:.2f}x lora, eval {row['eval_throughput_over_base']:.2f}x "
            f"base throughput, overhead {measured:+.1%} measured vs {predicted:+.1%} FLOPs",
            flush=True,
        )
    return pd.DataFrame(rows)


@command_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a transformers model directory")
    parser.add_argument("--out", type=Path, help="CSV to write: training steps and forward passes")
    parser.add_argument("--lm-eval-out", type=Path, help="CSV to write: lm-eval loglikelihood and the floor")
    parser.add_argument("--requests", type=int, default=REQUESTS, help="lm-eval requests per loglikelihood call")
    parser.add_argument(
        "--repeats", type=int, default=9, help="paired repetitions (median reported, with its 96%% interval at 9)"
    )
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    require_counts(("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0), ("--requests", args.requests, 1))
    if not (args.model / "config.json").is_file():
        raise UserError(f"--model {args.model} is not a model directory; run `medmoelora materialize-model` first")
    if args.out is None and args.lm_eval_out is None:
        raise UserError("nothing to measure: give --out (training, forward) and/or --lm-eval-out (lm-eval)")
    torch.manual_seed(0)
    adapted = {method: load(args.model, method) for method in METHODS}
    if args.out is not None:
        table = run(args.model, adapted, args.repeats, args.warmup, load_peft_lora(args.model))
        atomic.write_text(args.out, table.to_csv(index=False, float_format="%.4f"))
        print(f"wrote {args.out}")
    if args.lm_eval_out is not None:
        lm_eval_table = run_lm_eval(args.model, adapted, args.requests, args.repeats, args.warmup)
        atomic.write_text(args.lm_eval_out, lm_eval_table.to_csv(index=False, float_format="%.4f"))
        print(f"wrote {args.lm_eval_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
