"""Injecting the adapter into a transformers causal LM, and the model-level helpers around it.

    model = AutoModelForCausalLM.from_pretrained(...)
    adapted = inject_adapter(model, AdapterConfig.from_preset("med_moe_lora"))
    out = adapted(input_ids=ids, attention_mask=mask, labels=ids, task_ids=tasks, domain_labels=domains)
    out.loss.backward()  # in training mode: LM loss + weighted aux losses (out.lm_loss, out.aux_losses)
    adapted.activation_checkpointing_enable()  # gradient checkpointing: through the wrapper, not the base model

Injection replaces each targeted ``nn.Linear`` of decoder layer ``l`` with a `MoELoRALinear` whose
expert count is the schedule's N(l); the base model is modified in place and frozen, so the same
object can be handed to code that expects a plain transformers model (lm-eval's HFLM, generate()).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import noop_context_fn

from medmoelora.ablation import parse_disabled_experts
from medmoelora.config import AdapterConfig
from medmoelora.errors import UserError
from medmoelora.layer import MoELoRALinear, RoutingContext
from medmoelora.losses import LossWeights, aux_losses

LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def num_decoder_layers(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    count = getattr(config, "num_hidden_layers", None)
    if count is None:
        raise UserError(f"{type(model).__name__} has no config.num_hidden_layers; is it a transformers causal LM?")
    return int(count)


def find_target_linears(model: nn.Module, target_modules: tuple[str, ...]) -> dict[str, tuple[int, nn.Linear]]:
    """Module path -> (decoder layer index, linear) for every targeted projection inside a decoder layer."""
    found: dict[str, tuple[int, nn.Linear]] = {}
    for path, module in model.named_modules():
        name = path.rsplit(".", 1)[-1]
        match = LAYER_INDEX.search(path)
        if name in target_modules and match and isinstance(module, nn.Linear):
            found[path] = (int(match.group(1)), module)
    missing = set(target_modules) - {path.rsplit(".", 1)[-1] for path in found}
    if missing:
        raise UserError(
            f"target module(s) {sorted(missing)} not found in {type(model).__name__}'s decoder layers; "
            "set `target_modules` to projections the model has (Llama family: q_proj ... down_proj)"
        )
    return found


class MoELoRAModel(nn.Module):
    """A causal LM with MoE-LoRA layers injected, plus routing inputs, aux losses and helpers.

    ``forward`` takes the base model's arguments plus ``task_ids`` (B,) for task routing and
    ``domain_labels`` (B,) (0 general, 1 medical) for the knowledge-preservation loss.
    """

    # The aux losses are per-batch means, so transformers' Trainer must average the loss over
    # gradient-accumulation steps itself rather than pass num_items_in_batch to the model.
    accepts_loss_kwargs = False

    def __init__(self, model: nn.Module, config: AdapterConfig) -> None:
        super().__init__()
        self.model = model
        # Not `config`: code that handles transformers models (Trainer, lm-eval) reads `.config` as the
        # model's PretrainedConfig; `MoELoRAModel.config` forwards to it.
        self.adapter_config = config
        self.loss_weights = LossWeights(config.balance_weight, config.preservation_weight, config.base_l2_weight)
        self.context = RoutingContext()
        self.num_layers = num_decoder_layers(model)
        experts_per_layer = config.experts_per_layer(self.num_layers)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        dtype = next(model.parameters()).dtype
        adapter_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        self.layer_index: dict[str, int] = {}
        for path, (layer, linear) in find_target_linears(model, config.target_modules).items():
            num_experts = experts_per_layer[layer]
            adapted = MoELoRALinear(
                linear,
                ranks=config.expert_ranks(num_experts),
                alphas=config.expert_alphas(num_experts),
                context=self.context,
                routing=config.routing,
                top_k=config.top_k,
                temperature=config.temperature,
                learn_temperature=config.learn_temperature,
                num_base_experts=config.num_base_experts,
                dropout=config.dropout,
                adapter_dtype=adapter_dtype,
            )
            model.set_submodule(path, adapted)
            self.layer_index[path] = layer
        mark_adapter_trainable(self)
        self.train(model.training)  # a wrapper in training mode would keep router probabilities at evaluation

    @property
    def config(self) -> object:
        return self.model.config

    # ------------------------------------------------------------------------------------------------
    def forward(
        self,
        *args: object,
        task_ids: torch.Tensor | None = None,
        domain_labels: torch.Tensor | None = None,
        **kwargs: object,
    ) -> object:
        """The base model's forward with routing inputs. In training mode, when aux losses are on,
        the output also carries ``lm_loss`` (the model's own loss), ``aux_losses`` (unweighted terms)
        and ``loss = lm_loss + aux_loss``, so that transformers' Trainer optimises the whole objective."""
        mask = kwargs.get("attention_mask")
        with self.routing(task_ids=task_ids, domain_labels=domain_labels, token_mask=mask):
            output = self.model(*args, **kwargs)
            if not (self.training and self._has_aux_losses()):
                return output
            terms = self.aux_loss_terms([mask], [domain_labels])
        output["aux_losses"] = terms
        if output.get("loss") is not None:
            output["lm_loss"] = output["loss"]
            output["loss"] = output["loss"] + self.weighted_aux_loss(terms)
        return output

    def forward_unpadded(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_at: Sequence[torch.Tensor],
        task_ids: torch.Tensor | None = None,
        domain_labels: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor] | None]:
        """A right-padded batch, one sequence at a time on its real tokens only: the padded forward's math
        (padding is masked out of attention and of every loss) for the cost of the real tokens, and logits
        only where they are asked for (the LM head over a 49k vocabulary is a fifth of a small model's
        forward; a multiple-choice answer needs it at one position).

        input_ids, attention_mask: (B, T), right-padded; logits_at[b]: (n_b,) positions of row b whose
        logits to compute; task_ids, domain_labels: (B,) or None. Returns each row's logits (n_b, V) and,
        in training with aux losses on, the aux loss terms over every row's tokens pooled as one batch
        (else None).
        """
        lengths = attention_mask.sum(1)  # (B,)
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (T,)
        if not bool((attention_mask.bool() == (positions < lengths[:, None])).all()):
            raise UserError("forward_unpadded takes right-padded batches (each row's real tokens first)")
        logits: list[torch.Tensor] = []
        try:
            for row, length in enumerate(lengths.tolist()):
                with self.routing(
                    task_ids=None if task_ids is None else task_ids[row : row + 1],
                    domain_labels=None if domain_labels is None else domain_labels[row : row + 1],
                    free_router_probs=False,  # pooled over the rows below
                ):
                    output = self.model(input_ids=input_ids[row : row + 1, :length], logits_to_keep=logits_at[row])
                logits.append(output.logits[0])  # (n_b, V)
            if not (self.training and self._has_aux_losses()):
                return logits, None
            rows = range(len(logits))
            single = [None if domain_labels is None else domain_labels[row : row + 1] for row in rows]
            return logits, self.aux_loss_terms([None] * len(logits), single)
        finally:
            if self.training and self._has_aux_losses():
                self._free_router_probs()

    @contextmanager
    def routing(
        self,
        task_ids: torch.Tensor | list[int] | None = None,
        domain_labels: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        free_router_probs: bool = True,
    ) -> Iterator[None]:
        """Set the batch's routing inputs for every forward inside the block (generate() included). The
        router probabilities kept for the aux losses are freed on exit unless ``free_router_probs`` is False."""
        if task_ids is not None and not torch.is_tensor(task_ids):
            task_ids = torch.as_tensor(task_ids, dtype=torch.long)
        self.context.task_ids = task_ids
        self.context.domain_labels = domain_labels
        self.context.token_mask = None if token_mask is None else token_mask.bool()
        keeping = self.context.keep_router_probs = self.training and self._has_aux_losses()
        try:
            yield
        finally:
            self.context.clear()
            if keeping and free_router_probs:
                self._free_router_probs()

    # ------------------------------------------------------------------------------------------------
    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict[str, Any] | None = None, **options: Any
    ) -> None:
        """Checkpoint the base model's decoder layers (recompute their activations in backward) with
        routing kept exact. transformers' Trainer calls this for ``activation_checkpointing=True``;
        ``options`` (``every_n_layers``, ``offload``) go on to the base model's method.

        A checkpointed layer's forward runs again during backward, after `forward` has cleared the
        routing context. torch.utils.checkpoint calls its ``context_fn`` once per checkpointed call,
        during the original forward, and runs the recomputation inside the second context it returns:
        the one hook that ties a recomputation to the forward it repeats. Ours snapshots the routing
        inputs there and replays them around the recomputation, so that two forwards before one
        backward (or none) stay right, which keeping "the last batch's inputs" would not. Only the
        non-reentrant checkpoint takes a ``context_fn``; a ``context_fn`` of the caller's is kept.
        Enabling checkpointing on the base model directly leaves task routing without its task ids in
        backward: the layer then fails in one line rather than route wrongly.
        """
        kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        if kwargs["use_reentrant"]:
            raise UserError(
                "use_reentrant=True checkpointing cannot replay the routing inputs in backward; "
                "leave use_reentrant unset (non-reentrant checkpointing)"
            )
        kwargs["context_fn"] = functools.partial(self._checkpoint_contexts, kwargs.get("context_fn", noop_context_fn))
        # transformers 5.23 renamed gradient_checkpointing_enable (deprecated since) to activation_checkpointing_...
        enable = getattr(self.model, "activation_checkpointing_enable", None)
        (enable or self.model.gradient_checkpointing_enable)(kwargs, **options)

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, **options: Any
    ) -> None:
        """The older name of `activation_checkpointing_enable` (transformers < 5.23 and its Trainer)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **options)

    def activation_checkpointing_disable(self) -> None:
        disable = getattr(self.model, "activation_checkpointing_disable", None)
        (disable or self.model.gradient_checkpointing_disable)()

    gradient_checkpointing_disable = activation_checkpointing_disable

    def _checkpoint_contexts(
        self, callers_context_fn: Callable[[], tuple[AbstractContextManager, AbstractContextManager]]
    ) -> tuple[AbstractContextManager, AbstractContextManager]:
        """torch.utils.checkpoint's ``context_fn``: (context of the forward, context of its recomputation)."""
        snapshot = self.context.snapshot()  # called at the checkpointed forward, while the context is filled
        forward_context, recompute_context = callers_context_fn()
        return forward_context, _entered_together(recompute_context, self.context.replaying(snapshot))

    def _has_aux_losses(self) -> bool:
        return self.loss_weights.any()

    def adapter_layers(self) -> dict[str, MoELoRALinear]:
        return {path: module for path, module in self.model.named_modules() if isinstance(module, MoELoRALinear)}

    # ------------------------------------------------------------------------------------------------
    def aux_loss_terms(
        self, token_masks: Sequence[torch.Tensor | None], domain_labels: Sequence[torch.Tensor | None]
    ) -> dict[str, torch.Tensor]:
        """Unweighted aux losses from the router probabilities the layers kept, one entry of ``token_masks``
        ((B, T) bool or None) and ``domain_labels`` ((B,) or None) per forward (see `medmoelora.losses`).
        The `routing` block that kept them frees them on exit (`forward_unpadded` after its rows)."""
        layers = list(self.adapter_layers().values())
        return aux_losses(layers, token_masks, domain_labels, delta=self.adapter_config.preservation_delta)

    def _free_router_probs(self) -> None:
        for layer in self.adapter_layers().values():
            layer.kept_router_probs = []

    def weighted_aux_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """lambda_bal * balance + lambda_kp * preservation + lambda_l2 * base_l2, with the current
        ``loss_weights`` (the config's, unless the general-skill monitor raised them)."""
        return self.loss_weights.weighted_sum(terms)

    def cache_fused_weights(self, enabled: bool = True) -> None:
        """For evaluation of frozen weights: forwards without grad reuse each layer's concatenated
        expert (and router) weights instead of concatenating them every forward (`MoELoRALinear.
        forward_weights`). Leave it off while anything trains the adapter: a fused optimizer step
        changes the parameters without advancing the version counters the cache is keyed by."""
        for layer in self.adapter_layers().values():
            layer.cache_weights = enabled
            layer._weight_cache = None

    # ------------------------------------------------------------------------------------------------
    @contextmanager
    def merged(self, expert: int | None = None) -> Iterator[None]:
        """Evaluate with the adapter folded into the frozen weights inside the block; W0 comes back
        bit for bit on exit. Exact, and as fast as the base model, where the update is the same for
        every token: plain LoRA (routing 'none', ``expert`` None) or Multi-LoRA (routing 'task') with
        every forward inside the block routed to ``expert``. Soft routing mixes experts per token and
        cannot be merged. For evaluation only: merged weights get no gradient.
        """
        routing = self.adapter_config.routing
        if routing == "soft":
            raise UserError("soft routing mixes experts per token; only 'none' and 'task' routing can be merged")
        if routing == "task" and expert is None:
            raise UserError("a task-routed adapter merges one expert at a time; pass merged(expert=<task index>)")
        if routing == "none" and expert not in (None, 0):
            raise UserError(f"a LoRA adapter has one expert (0), got expert={expert}")
        layers = list(self.adapter_layers().values())
        if any(layer.expert_keep is not None for layer in layers):  # a merged weight would ignore the ablation
            raise UserError("experts are disabled (disable_experts); evaluate unmerged or call disable_experts(None)")
        try:
            for layer in layers:
                layer.merge(expert or 0)
            yield
        finally:
            for layer in layers:
                layer.unmerge()

    @contextmanager
    def disable_adapters(self) -> Iterator[None]:
        """Run the untouched base model inside the block."""
        layers = list(self.adapter_layers().values())
        if any(layer.merged_expert is not None for layer in layers):
            raise UserError("the adapter is merged into the base weights; disable it outside `merged()`")
        for layer in layers:
            layer.adapter_enabled = False
        try:
            yield
        finally:
            for layer in layers:
                layer.adapter_enabled = True

    def disable_experts(self, spec: str | None) -> dict[int, frozenset[int]]:
        """Remove the experts that ``spec`` names (`medmoelora.ablation`: ``base``, ``specialists``, ``L:E``
        terms) from every later forward's mixture, the router renormalised over the rest; ``None`` or
        ``"none"`` puts every expert back. Returns decoder layer -> removed experts."""
        layers = self.adapter_layers()
        if any(layer.merged_expert is not None for layer in layers.values()):
            raise UserError("the adapter is merged into the base weights; disable experts outside `merged()`")
        counts = {self.layer_index[path]: layer.num_experts for path, layer in layers.items()}
        removed = parse_disabled_experts(spec, counts, self.adapter_config.num_base_experts)
        for path, layer in layers.items():
            experts = removed.get(self.layer_index[path])
            keep = None
            if experts:  # a layer with nothing removed keeps its gates untouched (no renormalisation)
                keep = torch.ones(layer.num_experts, dtype=layer.gate_to_slot.dtype, device=layer.gate_to_slot.device)
                keep[sorted(experts)] = 0
            layer.expert_keep = keep
        return removed

    def parameter_groups(self, learning_rate: float, weight_decay: float = 0.0) -> list[dict[str, object]]:
        """Optimizer groups: base experts at ``base_lr_scale`` times the learning rate; routers and
        temperatures without weight decay."""
        groups: dict[str, list[nn.Parameter]] = {"base": [], "experts": [], "router": []}
        for path, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            name = path.rsplit(".", 1)[-1]
            if name in ("base_A", "base_B"):
                groups["base"].append(parameter)
            elif ".router." in path or name == "log_temperature":
                groups["router"].append(parameter)
            else:
                groups["experts"].append(parameter)
        specs = {
            "base": (learning_rate * self.adapter_config.base_lr_scale, weight_decay),
            "experts": (learning_rate, weight_decay),
            "router": (learning_rate, 0.0),
        }
        return [
            {"params": params, "lr": specs[name][0], "weight_decay": specs[name][1], "name": name}
            for name, params in groups.items()
            if params
        ]


@contextmanager
def _entered_together(*contexts: AbstractContextManager) -> Iterator[None]:
    with ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        yield


def mark_adapter_trainable(adapted: MoELoRAModel) -> None:
    """Only adapter parameters train; a fixed temperature stays fixed."""
    for layer in adapted.adapter_layers().values():
        for name, parameter in layer.adapter_params().items():
            parameter.requires_grad_(name != "log_temperature" or layer.learn_temperature)


def trainable_parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def inject_adapter(model: nn.Module, config: AdapterConfig) -> MoELoRAModel:
    """Inject the adapter that ``config`` describes into ``model`` (in place) and freeze the rest."""
    return MoELoRAModel(model, config)
