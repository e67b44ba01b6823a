"""The mixture-of-LoRA-experts linear layer, with all of a layer's experts fused into one matmul pair."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medmoelora.errors import UserError


@dataclass
class RoutingContext:
    """Per-batch inputs that routing needs beyond the hidden states; one instance shared by all layers.

    The model wrapper (`MoELoRAModel.forward`) fills it before the base model's forward and clears it
    after, so that the transformers forward signature stays untouched. Under gradient checkpointing
    the backward pass runs a layer's forward a second time, after the wrapper has cleared the context:
    `MoELoRAModel.activation_checkpointing_enable` takes a `snapshot` at each checkpointed forward and
    replays it (`replaying`) around the recomputation.
    """

    task_ids: torch.Tensor | None = None  # (B,) long: index into AdapterConfig.task_names
    domain_labels: torch.Tensor | None = None  # (B,) long: 0 general, 1 medical
    token_mask: torch.Tensor | None = None  # (B, T) bool: real tokens (not padding)
    keep_router_probs: bool = False  # keep each forward's router probabilities, per layer, for the aux losses
    track_stats: bool = False  # accumulate routing statistics (mean gate, top-1 share)
    recomputing: bool = False  # a checkpointed forward re-run in backward: no bookkeeping

    def clear(self) -> None:
        self.task_ids = self.domain_labels = self.token_mask = None
        self.keep_router_probs = False

    def snapshot(self) -> RoutingContext:
        """A copy of the current inputs and flags (the tensors are shared, not copied)."""
        return dataclasses.replace(self)

    @contextmanager
    def replaying(self, snapshot: RoutingContext) -> Iterator[None]:
        """Inside the block the context holds ``snapshot``'s inputs, marked as a recomputation, so that
        layers route exactly as in the original forward but neither keep router probabilities nor count
        statistics a second time; the previous state comes back on exit."""
        saved = self.snapshot()
        self._assign(dataclasses.replace(snapshot, recomputing=True))
        try:
            yield
        finally:
            self._assign(saved)

    def _assign(self, other: RoutingContext) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(other, field.name))

    @property
    def is_recomputation(self) -> bool:
        """True while a forward is being re-run for backward rather than run for real.

        ``recomputing`` covers checkpointing set up by `MoELoRAModel` (it replays the snapshot). The
        autograd engine's graph-task id covers any other recomputation (checkpointing enabled on the
        base model directly, FSDP's activation checkpointing): it is -1 outside a backward pass, and a
        layer's forward runs inside one only to recompute activations. torch has no public accessor
        for it; torch.utils.checkpoint reads it the same way.
        """
        return self.recomputing or torch._C._current_graph_task_id() != -1


class MoELoRALinear(nn.Module):
    """A frozen linear layer plus a soft mixture of LoRA experts (Med-MoE-LoRA, arXiv 2601.07935).

        h = W0 x + sum_i g_i(x) * (alpha_i / r_i) * B_i A_i x,       g(x) = softmax(W_g x / tau)

    Expert i has its own rank r_i. Instead of looping over experts, A_i are stacked into one
    ``lora_A`` of shape (R, d_in) and B_i into one ``lora_B`` of shape (d_out, R), R = sum_i r_i. A
    fixed (N, R) matrix ``gate_to_slot`` holds alpha_i / r_i in expert i's r_i rank slots and zeros
    elsewhere, so ``g @ gate_to_slot`` expands each gate, scaled, over its expert's slots, and the
    whole mixture is one matmul pair:

        delta = ((x A^T) * (g @ gate_to_slot)) B^T

    Routing: ``soft`` (the equation above; optional top-k keeps the k largest gates, renormalised),
    ``task`` (g = one-hot of the batch's task id: Multi-LoRA), ``none`` (one expert, g = 1: LoRA).
    The first ``num_base_experts`` experts are base experts, held in their own parameters
    (``base_A``, ``base_B``) so that the optimiser can give them their own learning rate.

    Where dropout is off, the router's rows ride along with A's: one GEMM ``x [A; W_g]^T`` gives the
    rank slots and the router logits together. Where the caller has said the weights are frozen
    (`MoELoRAModel.cache_fused_weights`, as ``--model medmoelora`` does), forwards without grad build
    the concatenated weights once instead of every forward. Where the update is the same for every token
    (routing ``none``, or ``task`` with one task for the whole forward), `merge` folds it into W0. The
    update is added into W0 x's own output buffer (``addmm_``), so an adapted layer allocates no output
    of its own.
    """

    def __init__(
        self,
        base: nn.Linear,
        ranks: list[int],
        alphas: list[float],
        context: RoutingContext,
        routing: str = "soft",
        top_k: int | None = None,
        temperature: float = 1.0,
        learn_temperature: bool = False,
        num_base_experts: int = 0,
        dropout: float = 0.0,
        adapter_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.base_layer = base
        self.context = context
        self.routing = routing
        self.top_k = top_k
        self.num_experts = len(ranks)
        self.num_base_experts = num_base_experts
        self.ranks = list(ranks)
        self.alphas = [float(alpha) for alpha in alphas]
        self.learn_temperature = learn_temperature
        self.adapter_enabled = True
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        d_in, d_out = base.in_features, base.out_features
        device = base.weight.device
        base_rank = sum(ranks[:num_base_experts])
        specialist_rank = sum(ranks[num_base_experts:])

        def weight(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape, device=device, dtype=adapter_dtype))

        self.base_A = weight(base_rank, d_in) if base_rank else None  # (R_base, d_in)
        self.base_B = weight(d_out, base_rank) if base_rank else None  # (d_out, R_base)
        self.lora_A = weight(specialist_rank, d_in)  # (R_spec, d_in)
        self.lora_B = weight(d_out, specialist_rank)  # (d_out, R_spec)

        slot_expert = torch.repeat_interleave(torch.arange(self.num_experts), torch.tensor(ranks))  # (R,)
        slot_scale = torch.tensor([alpha / rank for alpha, rank in zip(alphas, ranks, strict=True)])[slot_expert]
        gate_to_slot = torch.zeros(self.num_experts, len(slot_expert))  # (N, R)
        gate_to_slot[slot_expert, torch.arange(len(slot_expert))] = slot_scale
        # A matmul rather than an index: its backward is a matmul too, where an index's is a slow scatter-add.
        self.register_buffer("gate_to_slot", gate_to_slot.to(device, adapter_dtype), persistent=False)  # (N, R)

        if routing == "soft":
            # The router runs in fp32 whatever the model's dtype: softmax over bf16 logits is too
            # coarse to separate experts (MixLoRA's habit).
            self.router = nn.Linear(d_in, self.num_experts, bias=False, device=device, dtype=torch.float32)
            self.log_temperature = nn.Parameter(
                torch.tensor(math.log(temperature), device=device, dtype=torch.float32),
                requires_grad=learn_temperature,
            )
        else:
            self.router = None
            self.log_temperature = None
        self.reset_parameters()
        # Router probabilities of each forward since the model last freed them (`MoELoRAModel.routing`): one
        # for a batch, one per sequence where a step runs its sequences one by one (`forward_unpadded`).
        self.kept_router_probs: list[torch.Tensor] = []
        # Expert ablation (evaluation only): (N,) 1 = kept, 0 = removed; None keeps every expert and leaves
        # the gates untouched. Set through `MoELoRAModel.disable_experts` (see `medmoelora.ablation`).
        self.expert_keep: torch.Tensor | None = None
        self.reset_stats()
        # Off by default: a fused optimizer step (torch's AdamW(fused=True), transformers' default) updates
        # the parameters in place without advancing their version counters, so a cache keyed by them
        # would serve the weights of an earlier step to every no-grad forward during training.
        self.cache_weights = False
        self._weight_cache: tuple[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] | None = None
        # Top-k: the dense path (every expert's rank slots, the unchosen ones zeroed) or the grouped one
        # (`grouped_top_k_update`), per shape and device by `grouped_top_k_pays` unless chosen by hand.
        self.use_grouped_top_k(None)
        self.merged_expert: int | None = None  # the expert folded into W0 by `merge`, None when unmerged
        self._unmerged_weight: torch.Tensor | None = None  # W0's own storage while merged (restored as is)

    def reset_parameters(self) -> None:
        """A like nn.Linear (Kaiming-uniform), B = 0: every expert starts as a zero update, so the
        adapted model is exactly the base model at step 0 (as in LoRA)."""
        for a, b in ((self.base_A, self.base_B), (self.lora_A, self.lora_B)):
            if a is not None:
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                nn.init.zeros_(b)
        if self.router is not None:
            self.router.reset_parameters()

    def reset_stats(self) -> None:
        # Counters live on the device and are only read on request: no host sync in the forward pass.
        self.stat_gate_sum: torch.Tensor | None = None  # (N,)
        self.stat_top1_count: torch.Tensor | None = None  # (N,)
        self.stat_token_count: torch.Tensor | None = None  # ()

    @property
    def stat_tokens(self) -> int:
        return 0 if self.stat_token_count is None else int(self.stat_token_count)

    # ----------------------------------------------------------------------------------------------
    @property
    def temperature(self) -> torch.Tensor | None:
        return None if self.log_temperature is None else self.log_temperature.exp()

    def fused_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All experts' A (R, d_in) and B (d_out, R), base experts first."""
        if self.base_A is None:
            return self.lora_A, self.lora_B
        return torch.cat([self.base_A, self.lora_A], dim=0), torch.cat([self.base_B, self.lora_B], dim=1)

    def use_grouped_top_k(self, grouped: bool | None) -> None:
        """Top-k on the grouped path (True), the dense one (False), or whichever `grouped_top_k_pays` says is
        faster for this layer's shape on its device (None, the default; chosen again when the layer moves).
        The router then leaves or joins A's GEMM, which it shares where both see the same input in the same
        dtype (no dropout on A's) and A's GEMM is dense."""
        if grouped and self.top_k is None:
            raise UserError("the grouped path computes top-k routing; this layer has no top_k")
        self.grouped_top_k_setting = grouped
        if grouped is None:
            grouped = grouped_top_k_pays(self.ranks, self.top_k, self.lora_A.device)
        self.grouped_top_k = grouped
        dropout_off = isinstance(self.dropout, nn.Identity)
        same_dtype = self.lora_A.dtype == torch.float32  # the router's
        self.router_in_a_gemm = self.router is not None and dropout_off and same_dtype and not grouped
        self._weight_cache = None

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> MoELoRALinear:
        """``.to()``, ``.cuda()``, ...: then the top-k path is chosen again for the new device, unless set by hand."""
        module = super()._apply(fn, recurse)
        if getattr(self, "grouped_top_k_setting", False) is None:
            self.use_grouped_top_k(None)
        return module

    def forward_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights one forward multiplies by: A with the router's rows below it where
        ``router_in_a_gemm`` ((R + N, d_in), else (R, d_in)), and B (d_out, R).

        Concatenated afresh every forward, unless ``cache_weights`` is on and grad is off: then the
        concatenation is cached, keyed by each parameter's version counter and storage, so that
        ``load_state_dict``, ``copy_`` or ``.to()`` rebuild it. A fused optimizer step does not advance the
        version counters, which is why the cache is for frozen weights only (`MoELoRAModel.cache_fused_weights`).
        """
        parts_A = [p for p in (self.base_A, self.lora_A) if p is not None]
        parts_B = [p for p in (self.base_B, self.lora_B) if p is not None]
        if self.router_in_a_gemm:
            parts_A.append(self.router.weight)  # (N, d_in)
        if len(parts_A) == 1:  # plain LoRA, Multi-LoRA: the parameters themselves, nothing to build
            return parts_A[0], parts_B[0]
        if torch.is_grad_enabled() or not self.cache_weights:
            return torch.cat(parts_A, dim=0), torch.cat(parts_B, dim=1)
        key = tuple(n for p in parts_A + parts_B for n in (p._version, p.data_ptr()))
        if self._weight_cache is None or self._weight_cache[0] != key:
            joined = (torch.cat(parts_A, dim=0), torch.cat(parts_B, dim=1) if len(parts_B) > 1 else parts_B[0])
            self._weight_cache = (key, joined)
        return self._weight_cache[1]

    def adapter_params(self) -> dict[str, nn.Parameter]:
        """The adapter's own parameters (the frozen base layer excluded)."""
        return {name: p for name, p in self.named_parameters() if not name.startswith("base_layer.")}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, d_in) -> (B, T, d_out)."""
        out_shape = (*x.shape[:-1], self.base_layer.out_features)
        # W0 x on the tokens as rows: (B*T, d_out), its own storage, not a view, which the update is added
        # into in place. A second (B, T, d_out) output would cost more than the low-rank GEMMs on a CPU
        # (a fresh buffer that size comes as new pages from the kernel), and an in-place add into a view
        # would cost a copy of the output in backward; autograd saves no linear layer's output, so in place
        # is exact.
        result = self.base_layer(x.flatten(0, -2))  # (B*T, d_out); while merged, W0 includes the update
        if not self.adapter_enabled or self.merged_expert is not None:
            return result.view(out_shape)
        if self.grouped_top_k:
            update = self.grouped_top_k_update(x, self.gates_after_ablation(x))  # (B, T, d_out)
            return result.add_(update.flatten(0, -2).to(result.dtype)).view(out_shape)
        lora_A, lora_B = self.forward_weights()  # (R [+ N], d_in), (d_out, R)
        rank = lora_B.shape[1]
        projected = F.linear(self.dropout(x.to(lora_A.dtype)), lora_A)  # (B, T, R [+ N])
        router_logits = None  # (B, T, N), fp32, where the router rides in A's GEMM
        if self.router_in_a_gemm:
            hidden, router_logits = projected.split((rank, projected.shape[-1] - rank), dim=-1)  # (B, T, R), (B, T, N)
        else:
            hidden = projected  # (B, T, R)
        gates = self.gates_after_ablation(x, router_logits)  # (B, T, N) or (B, 1, N) or None
        scale = 1.0
        if gates is None:  # LoRA: one expert, its alpha / r applied by the output GEMM (no pass over hidden)
            scale = self.alphas[0] / self.ranks[0]
        else:  # (B, T, N) @ (N, R) -> (B, T, R): each expert's gate times alpha_i / r_i on its rank slots
            hidden = hidden * (gates.to(hidden.dtype) @ self.gate_to_slot)  # (B, T, R)
        hidden = hidden.flatten(0, -2)  # (B*T, R)
        if result.dtype != hidden.dtype:  # bf16 base, fp32 adapter
            return result.add_((scale * F.linear(hidden, lora_B)).to(result.dtype)).view(out_shape)
        # result += scale * hidden @ B^T as one GEMM (addmm_): one pass over the (B*T, d_out) output, not two
        return result.addmm_(hidden, lora_B.t(), alpha=scale).view(out_shape)

    def grouped_top_k_update(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """sum_i g_i(x) (alpha_i / r_i) B_i A_i x over the k experts a token chose, computed per expert on
        the tokens that chose it: (B, T, d_in), gates (B, T, N) with k non-zeros a token -> (B, T, d_out)."""
        lora_A, lora_B = self.fused_weights()  # (R, d_in), (d_out, R)
        flat_x = self.dropout(x.to(lora_A.dtype)).reshape(-1, x.shape[-1])  # (B*T, d_in)
        flat_gates = gates.reshape(-1, self.num_experts).to(lora_A.dtype)  # (B*T, N)
        token, expert = flat_gates.nonzero(as_tuple=True)  # (B*T*k,) each: who chose whom
        tokens_by_expert = token[expert.argsort(stable=True)].split(
            torch.bincount(expert, minlength=self.num_experts).tolist()
        )
        update = flat_x.new_zeros(flat_x.shape[0], lora_B.shape[0])  # (B*T, d_out)
        start = 0
        for i, (rank, tokens) in enumerate(zip(self.ranks, tokens_by_expert, strict=True)):
            slots = slice(start, start + rank)
            start += rank
            if tokens.numel() == 0:
                continue
            hidden = flat_x[tokens] @ lora_A[slots].t()  # (n_i, d_in) @ (d_in, r_i) -> (n_i, r_i)
            hidden = hidden * (flat_gates[tokens, i, None] * (self.alphas[i] / rank))  # g_i alpha_i / r_i
            update.index_add_(0, tokens, hidden @ lora_B[:, slots].t())  # (n_i, r_i) @ (r_i, d_out)
        return update.view(*x.shape[:-1], -1)

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, expert: int = 0) -> None:
        """Fold expert ``expert``'s update into the frozen weight: W0 <- W0 + (alpha_e / r_e) B_e A_e.

        Exact where the update is the same for every token: routing ``none`` (expert 0) or ``task``
        with one task for every sequence of the forwards until `unmerge`. The merged weight is a new
        tensor and W0's own storage is kept untouched aside, so `unmerge` restores it bit for bit.
        """
        if self.routing == "soft":
            raise UserError("a soft-routed layer mixes experts per token and cannot be merged into its weight")
        if self.merged_expert is not None:
            raise UserError(f"this layer already has expert {self.merged_expert} merged; unmerge it first")
        if not 0 <= expert < self.num_experts:
            raise UserError(f"expert {expert} out of range: this layer has {self.num_experts} experts")
        lora_A, lora_B = self.fused_weights()  # (R, d_in), (d_out, R); no base experts without soft routing
        start = sum(self.ranks[:expert])
        rows = slice(start, start + self.ranks[expert])
        weight = self.base_layer.weight  # (d_out, d_in)
        scale = self.alphas[expert] / self.ranks[expert]
        # W0 + scale * B_e @ A_e in the adapter's dtype (fp32 for a bf16 base), rounded once to W0's dtype
        merged = torch.addmm(weight.to(lora_A.dtype), lora_B[:, rows], lora_A[rows], alpha=scale)  # (d_out, d_in)
        self._unmerged_weight = weight.data
        weight.data = merged.to(weight.dtype)
        self.merged_expert = expert

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put W0's own storage back (bit for bit the weight before `merge`)."""
        if self.merged_expert is None:
            return
        self.base_layer.weight.data = self._unmerged_weight
        self._unmerged_weight = None
        self.merged_expert = None

    # ----------------------------------------------------------------------------------------------
    def gates(self, x: torch.Tensor, router_logits: torch.Tensor | None = None) -> torch.Tensor | None:
        """Expert weights g(x): (B, T, N) for soft routing, (B, 1, N) for task routing, None for LoRA.
        ``router_logits`` (B, T, N): W_g x where the forward computed it in A's GEMM."""
        if self.routing == "none":
            return None
        if self.routing == "task":
            gates = self._task_gates(x)
        else:
            probs = self.router_probs(x, router_logits)  # (B, T, N), fp32
            gates = probs if self.top_k is None else _keep_top_k(probs, self.top_k)
            if self.context.keep_router_probs and not self.context.is_recomputation:
                self.kept_router_probs.append(probs)
        if self.context.track_stats and not self.context.is_recomputation:
            self._accumulate_stats(gates.expand(*x.shape[:-1], self.num_experts))
        return gates

    def gates_after_ablation(self, x: torch.Tensor, router_logits: torch.Tensor | None = None) -> torch.Tensor | None:
        """`gates` with the expert ablation applied (`MoELoRAModel.disable_experts`); unchanged without one."""
        gates = self.gates(x, router_logits)  # (B, T, N) or (B, 1, N) or None
        if self.expert_keep is not None:  # expert ablation: the one step, g_i <- g_i m_i / sum_j g_j m_j
            gates = _renormalise_without_removed(gates, self.expert_keep)  # (B, T, N), (B, 1, N) or (N,)
        return gates

    def router_probs(self, x: torch.Tensor, router_logits: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(W_g x / tau) in fp32: (B, T, d_in) -> (B, T, N); W_g x is ``router_logits`` if given."""
        logits = self.router(x.float()) if router_logits is None else router_logits  # (B, T, N)
        return torch.softmax(logits / self.log_temperature.exp(), dim=-1)

    def _task_gates(self, x: torch.Tensor) -> torch.Tensor:
        task_ids = self.context.task_ids
        if task_ids is None and self.context.is_recomputation:
            raise UserError(
                "gradient checkpointing re-ran a task-routed layer in backward without the batch's task ids; "
                "enable checkpointing on the adapted model (`adapted.activation_checkpointing_enable()` after "
                "inject_adapter), not on the base model"
            )
        if task_ids is None:
            raise UserError(
                "this adapter routes by task (Multi-LoRA) but the batch has no task ids; "
                "pass task_ids=... to MoELoRAModel.forward or use `with model.routing(task_ids=...)`"
            )
        if task_ids.shape[0] == 1:  # one task for the whole batch
            task_ids = task_ids.expand(x.shape[0])
        if task_ids.shape[0] != x.shape[0]:
            raise UserError(f"got {task_ids.shape[0]} task ids for a batch of {x.shape[0]} sequences")
        one_hot = F.one_hot(task_ids.to(x.device), self.num_experts).float()  # (B, N)
        return one_hot.view(x.shape[0], *([1] * (x.dim() - 2)), self.num_experts)  # (B, 1, N)

    @torch.no_grad()
    def _accumulate_stats(self, gates: torch.Tensor) -> None:
        flat = gates.reshape(-1, self.num_experts).double()  # (B*T, N)
        weight = torch.ones(flat.shape[0], dtype=flat.dtype, device=flat.device)  # (B*T,): 1 real, 0 padding
        mask = self.context.token_mask
        if mask is not None and mask.numel() == flat.shape[0]:  # not during cached decoding
            weight = mask.reshape(-1).to(flat)
        top1 = F.one_hot(flat.argmax(-1), self.num_experts).to(flat)  # (B*T, N)
        if self.stat_gate_sum is None:
            self.stat_gate_sum = flat.new_zeros(self.num_experts)
            self.stat_top1_count = flat.new_zeros(self.num_experts)
            self.stat_token_count = flat.new_zeros(())
        self.stat_gate_sum += weight @ flat
        self.stat_top1_count += weight @ top1
        self.stat_token_count += weight.sum()

    def extra_repr(self) -> str:
        return (
            f"experts={self.num_experts}, ranks={self.ranks}, routing={self.routing}, top_k={self.top_k}, "
            f"base_experts={self.num_base_experts}"
        )


# Where the grouped top-k path is faster than the dense one: on a CPU, once the rank slots that dense top-k
# computes and then zeroes, (N - k) x mean rank, reach this many. Measured on 2 idle cores by make perf
# (results/perf/top_k.csv; 576 -> 1536, 2048 tokens, forward + backward, dense / grouped, 96% intervals in the
# last two runs): 1.21-1.34x at N = 8, k = 1, rank 32 (224 slots), 1.38-1.80x at N = 16, rank 32 (480, 448);
# at N = 8, k = 2, rank 32 (192) ties in four earlier runs (0.99-1.11x), then 1.10x [1.05, 1.27] (da5e192) and
# 1.12x [1.05, 1.14] (2367208); 0.70-1.08x at every shape below, except N = 16, k = 1, rank 8 (120 slots):
# 1.01x, then 1.05x [1.02, 1.09] in 2367208's run alone, left dense. On a GPU it was not measured: dense there.
GROUPED_TOP_K_MIN_SKIPPED_SLOTS = 150


def grouped_top_k_pays(ranks: list[int], top_k: int | None, device: torch.device) -> bool:
    """True where the grouped top-k path measured faster than the dense one (see the constant above)."""
    if top_k is None or torch.device(device).type != "cpu":
        return False
    skipped_slots = (len(ranks) - top_k) * sum(ranks) / len(ranks)  # (N - k) x mean rank
    return skipped_slots >= GROUPED_TOP_K_MIN_SKIPPED_SLOTS


def _keep_top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Zero all but the k largest gates and renormalise them to sum to 1: (B, T, N) -> (B, T, N)."""
    top_values, top_index = probs.topk(k, dim=-1)  # (B, T, k)
    top_values = top_values / top_values.sum(dim=-1, keepdim=True)
    return torch.zeros_like(probs).scatter(-1, top_index, top_values)


def _renormalise_without_removed(gates: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor:
    """Expert ablation: zero the removed experts' gates and renormalise the rest to sum to 1, as if the router
    had only the kept experts. ``gates`` (..., N) or None (one expert, g = 1); ``keep`` (N,) of 0 and 1.
    Where every expert with weight is removed the sum is 0 and so is every gate: the layer is W0 exactly."""
    weights = keep if gates is None else gates * keep  # (..., N)
    return weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
