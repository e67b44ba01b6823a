"""``lm_eval --model medmoelora``: lm-eval's HFLM with a saved Med-MoE-LoRA adapter injected in place.

    lm_eval --model medmoelora --model_args pretrained=BASE_DIR,adapter=ADAPTER_DIR,dtype=float32 \
        --include_path benchmark/tasks --tasks TASKS      # the suite's tasks: medmoelora.tasks

``disable_experts=SPEC`` in ``--model_args`` removes experts from the mixture for the whole evaluation
(``base``, ``specialists``, ``L:E`` terms joined with ``+``; `medmoelora.ablation`).

The base model loads through HFLM's own machinery (dtype, device, batch_size incl. ``auto``,
max_batch_size, ``accelerate launch`` data parallelism), then `medmoelora.load_adapter` injects the
adapter into it. HFLM keeps calling the transformers model itself (generate() included); the adapter
layers inside it read their routing inputs from the adapter's shared routing context.

Multi-LoRA adapters (routing 'task') need a task id per sequence: requests are grouped by the expert
their lm-eval task maps to (`medmoelora_eval.task_routing`), each group runs through HFLM on its own
with that id set for every forward, and the results go back in the original order. Soft and none
routing need no ids and take HFLM's path unchanged.

Where the adapter's update is the same for every token of a request call (plain LoRA; Multi-LoRA
within one expert's group) it is folded into the frozen weights (`MoELoRAModel.merged`), so these
adapters evaluate at the base model's speed. The merge stays between calls while the same expert is
wanted (a LoRA adapter merges once; Multi-LoRA switches when the next group needs another expert), so
its cost, a pass over every adapted weight, is not paid per call; `MedMoELoRALM.unmerge` puts the base
weights back bit for bit. ``merge=False`` keeps the unmerged path (same results up to float rounding).

Loglikelihood requests compute the LM head and its log-softmax only at the positions a continuation is
scored (`medmoelora_eval.scored_logits`), not over the whole vocabulary at every position as HFLM does; the
same log-probabilities up to float rounding. ``scored_logits_only=False`` takes HFLM's own loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import CacheHook

from medmoelora.base_models import check_model_dir, hub_offline
from medmoelora.errors import UserError
from medmoelora.serialization import load_adapter, read_adapter_config
from medmoelora_eval.errors import one_line_user_errors
from medmoelora_eval.scored_logits import ScoredLogitsLM
from medmoelora_eval.task_routing import TaskRouter

Result = TypeVar("Result")


def _check_pretrained(pretrained: Any) -> None:
    """A local base model directory with unreadable files fails in one line naming the file; a name that is
    neither a directory nor reachable on the Hub (offline) says so instead of a Hub lookup traceback."""
    if not isinstance(pretrained, (str, os.PathLike)):
        return  # an already built model (Python callers)
    if Path(pretrained).expanduser().is_dir():
        check_model_dir(Path(pretrained).expanduser(), "pretrained=")
    elif hub_offline():
        raise UserError(
            f"pretrained={pretrained} is not a local directory and the Hugging Face Hub is offline "
            "(HF_HUB_OFFLINE); give the base model directory (medmoelora materialize-model makes one)"
        )


class MedMoELoRALM(ScoredLogitsLM):
    """HFLM plus ``adapter=DIR`` (a directory that `medmoelora.save_adapter` wrote), scoring with logits at the
    continuation's positions only (`medmoelora_eval.scored_logits`)."""

    def __init__(
        self,
        pretrained: Any = None,
        adapter: str | None = None,
        merge: bool = True,
        disable_experts: Any = None,
        **kwargs: Any,
    ) -> None:
        with one_line_user_errors():
            if not pretrained:
                raise UserError("--model medmoelora needs the base model: --model_args pretrained=BASE_DIR,adapter=DIR")
            if not adapter:
                raise UserError("--model medmoelora needs the adapter: --model_args pretrained=BASE_DIR,adapter=DIR")
            if kwargs.get("peft") or kwargs.get("delta"):
                raise UserError("--model medmoelora takes adapter=DIR, not peft= or delta= (use --model hf for those)")
            read_adapter_config(adapter)  # a bad path fails now, not after the base model has loaded
            _check_pretrained(pretrained)
            super().__init__(pretrained=pretrained, **kwargs)
            # In place: self._model stays the transformers model that HFLM drives; its targeted linears
            # become MoELoRALinear on the device of the weights they wrap (so accelerate's placement holds).
            self.adapted = load_adapter(self.model, adapter)
            self.adapted.eval()  # new modules start in training mode; eval keeps no router state
            self.adapted.cache_fused_weights()  # nothing trains here: concatenate the experts once
            # lm-eval turns a bare number into an int: str() so that the spec's own check names it.
            spec = None if disable_experts is None else str(disable_experts)
            self.disabled_experts = self.adapted.disable_experts(spec)  # decoder layer -> removed experts
        self.disable_experts_spec = spec or "none"
        self.adapter = str(adapter)
        config = self.adapted.adapter_config
        self.task_router = TaskRouter(config, self.adapter) if config.routing == "task" else None
        self._active_expert: int | None = None
        # Soft routing differs per token: no merge. Nor with experts removed: the ablation acts on the gates.
        self.merge = bool(merge) and config.routing != "soft" and not self.disabled_experts
        self._merge_held = ExitStack()  # holds the `merged` block of the expert now in the weights
        self._merged_expert: int | None = None

    # ---- requests: grouped by expert for task routing -----------------------------------------------
    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self._per_expert(super().loglikelihood, requests, disable_tqdm)

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        return self._per_expert(super().loglikelihood_rolling, requests, disable_tqdm)

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        return self._per_expert(super().generate_until, requests, disable_tqdm)

    def _per_expert(
        self,
        run: Callable[..., list[Result]],
        requests: list[Instance],
        disable_tqdm: bool,
    ) -> list[Result]:
        """Run ``run`` once per expert on that expert's requests; results in the original order."""
        if self.task_router is None or not requests:
            self._merge_expert(None)
            return run(requests, disable_tqdm=disable_tqdm)
        with one_line_user_errors():
            groups = self.task_router.group(requests)
        results: list[Any] = [None] * len(requests)
        for expert in self._shared_expert_order(groups):
            positions = groups.get(expert, [])
            self._merge_expert(expert)
            with self._expert(expert), self._cache_writes(enabled=bool(positions)):
                # A rank without requests for an expert that another rank has still runs one (discarded),
                # so that HFLM's collectives (auto batch size, rolling-window padding) pair up across ranks.
                outputs = run([requests[i] for i in positions] or requests[:1], disable_tqdm=disable_tqdm)
            for position, output in zip(positions, outputs, strict=False):
                results[position] = output
        return results

    def _shared_expert_order(self, groups: dict[int, list[int]]) -> list[int]:
        """The experts to run, in the same order on every rank (data parallelism)."""
        experts = sorted(groups)
        if self.world_size > 1:
            from accelerate.utils import gather_object

            experts = sorted({expert for rank in gather_object([experts]) for expert in rank})
        return experts

    @contextmanager
    def _expert(self, expert: int) -> Iterator[None]:
        self._active_expert = expert
        try:
            yield
        finally:
            self._active_expert = None

    def _merge_expert(self, expert: int | None) -> None:
        """Have ``expert`` (None: LoRA's one) folded into the weights, switching from another if need be."""
        if not self.merge or (self._merge_held_open() and self._merged_expert == expert):
            return
        self.unmerge()
        self._merge_held.enter_context(self.adapted.merged(expert))
        self._merged_expert = expert

    def _merge_held_open(self) -> bool:
        return any(layer.merged_expert is not None for layer in self.adapted.adapter_layers().values())

    def unmerge(self) -> None:
        """Put the base model's own weights back (bit for bit); the next request call merges again."""
        self._merge_held.close()
        self._merged_expert = None

    @contextmanager
    def _cache_writes(self, enabled: bool) -> Iterator[None]:
        """``--use_cache`` must not store the answers of padding requests under their own task's prompt."""
        if enabled:
            yield
            return
        hook, self.cache_hook = self.cache_hook, CacheHook(None)
        try:
            yield
        finally:
            self.cache_hook = hook

    # ---- forwards: the active expert's id for every sequence of the batch ------------------------------
    def _routing(self, batch_size: int) -> Any:
        if self.task_router is None:
            return nullcontext()
        if self._active_expert is None:
            raise RuntimeError("task-routed forward outside a request group; call loglikelihood/generate_until")
        task_ids = torch.full((batch_size,), self._active_expert, dtype=torch.long)
        return self.adapted.routing(task_ids=task_ids)

    def _model_call(
        self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        with self._routing(inps.shape[0]):
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    def _scored_logits(self, inputs: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        with self._routing(inputs.shape[0]):
            return super()._scored_logits(inputs, kept)

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: Sequence[str], **kwargs: Any) -> Any:
        with self._routing(context.shape[0]):
            return super()._model_generate(context, max_length, stop, **kwargs)

    def get_model_info(self) -> dict[str, Any]:
        config = self.adapted.adapter_config
        info = super().get_model_info()
        info.update(
            adapter=self.adapter, adapter_method=config.method, adapter_routing=config.routing, merged=self.merge
        )
        info.update(disable_experts=self.disable_experts_spec, scored_logits_only=self.scored_logits_only)
        return info
