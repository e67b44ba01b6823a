"""The adapter config: one validated dataclass that expresses all four methods.

LoRA, Multi-LoRA, uniform MoE-LoRA and Med-MoE-LoRA are presets of this one config, so that the
comparison between them runs the same code and differs only in the knobs below. Validation runs on
creation; every error names the field, the value received and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from medmoelora.errors import ConfigError, UserError, unknown_name
from medmoelora.tasks import DEFAULT_EVAL_TASK_MAP, TRAINING_TASKS

Routing = Literal["none", "task", "soft"]
ScheduleKind = Literal["uniform", "step", "power"]

# Llama-family projection names; a layer index comes from the `layers.<i>.` part of a module path.
LLAMA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
METHODS = ("lora", "multi_lora", "uniform_moe", "med_moe_lora")
ROUTINGS = ("none", "task", "soft")
SCHEDULES = ("uniform", "step", "power")
DOMAINS = ("general", "medical")  # domain label 0 = general, 1 = medical


@dataclass(frozen=True)
class ExpertSchedule:
    """How many experts each decoder layer gets.

    - ``uniform``: ``num_experts`` everywhere.
    - ``step``: ``min_experts`` for layers ``l < split_fraction * L``, ``max_experts`` above. The paper:
      N = 2 for l < 2L/3, N = 8 above; with L = 32, 2L/3 = 21.33, so layers 0-21 (22 layers) get 2 and
      layers 22-31 (10 layers) get 8.
    - ``power``: ``N(l) = round(min + (max - min) * (l / (L - 1)) ** gamma)``; gamma > 1 keeps lower
      layers small for longer, gamma < 1 grows them sooner.
    - ``inverted``: mirrors the layer index (``l -> L - 1 - l``) for the bottom-heavy ablation, so an
      inverted schedule has exactly as many experts in total as the original.
    """

    kind: ScheduleKind = "uniform"
    num_experts: int = 4
    min_experts: int = 2
    max_experts: int = 8
    split_fraction: float = 2 / 3
    gamma: float = 1.0
    inverted: bool = False

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise unknown_name("expert_schedule.kind", self.kind, SCHEDULES)
        for name in ("num_experts", "min_experts", "max_experts"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"expert_schedule.{name}", value, "must be an integer >= 1")
        if self.min_experts > self.max_experts:
            raise ConfigError(
                "expert_schedule.min_experts",
                self.min_experts,
                f"must be <= max_experts ({self.max_experts})",
            )
        if not 0.0 < self.split_fraction < 1.0:
            raise ConfigError("expert_schedule.split_fraction", self.split_fraction, "must lie in (0, 1)")
        if not self.gamma > 0:
            raise ConfigError("expert_schedule.gamma", self.gamma, "must be > 0")

    def experts_per_layer(self, num_layers: int) -> list[int]:
        """Expert count of every decoder layer, bottom (0) to top (L - 1)."""
        if num_layers < 1:
            raise UserError(f"the base model has {num_layers} decoder layers; need at least 1")
        counts = []
        for layer in range(num_layers):
            depth = num_layers - 1 - layer if self.inverted else layer
            counts.append(self._count_at(depth, num_layers))
        return counts

    def _count_at(self, layer: int, num_layers: int) -> int:
        if self.kind == "uniform":
            return self.num_experts
        if self.kind == "step":
            return self.min_experts if layer < self.split_fraction * num_layers else self.max_experts
        position = layer / (num_layers - 1) if num_layers > 1 else 1.0
        return round(self.min_experts + (self.max_experts - self.min_experts) * position**self.gamma)

    def largest(self) -> int:
        return self.num_experts if self.kind == "uniform" else self.max_experts

    def smallest(self) -> int:
        return self.num_experts if self.kind == "uniform" else self.min_experts


@dataclass(frozen=True)
class AdapterConfig:
    """Every knob of the shared adapter. Presets: see `PRESETS` and `AdapterConfig.from_preset`.

    Experts: expert ``i`` of a layer has rank ``ranks[i % len(ranks)]`` and alpha
    ``alphas[i % len(alphas)]`` (default ``2 * rank``); its update is scaled by ``alpha_i / r_i``.
    Base experts are experts ``0 .. num_base_experts - 1`` of every layer: they start at zero like all
    experts (B = 0, so the adapted model is exactly the base model), learn at ``base_lr_scale`` times
    the learning rate and are pulled toward zero with ``base_l2_weight``; the knowledge-preservation
    loss sends general-domain tokens to them and medical tokens to the specialists.
    """

    method: str = "med_moe_lora"
    base_model: str | None = None
    target_modules: tuple[str, ...] = LLAMA_TARGET_MODULES
    expert_schedule: ExpertSchedule = field(default_factory=ExpertSchedule)
    ranks: tuple[int, ...] = (8,)
    alphas: tuple[float, ...] | None = None
    dropout: float = 0.0
    routing: Routing = "soft"
    top_k: int | None = None
    temperature: float = 1.0
    learn_temperature: bool = False
    num_base_experts: int = 0
    base_lr_scale: float = 1.0
    base_l2_weight: float = 0.0
    balance_weight: float = 0.0
    preservation_weight: float = 0.0
    preservation_delta: float = 0.5
    task_names: tuple[str, ...] = ()
    eval_task_map: Mapping[str, str] = field(default_factory=dict)
    fallback_task: str | None = None

    def __post_init__(self) -> None:
        # Accept lists from YAML/JSON and store tuples so that the config is hashable and frozen.
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "ranks", tuple(self.ranks))
        object.__setattr__(self, "task_names", tuple(self.task_names))
        object.__setattr__(self, "eval_task_map", dict(self.eval_task_map))
        if self.alphas is not None:
            object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        if isinstance(self.expert_schedule, Mapping):
            object.__setattr__(self, "expert_schedule", _build(ExpertSchedule, self.expert_schedule))
        self._validate()

    # ----------------------------------------------------------------------------------------------
    def _validate(self) -> None:
        if self.method not in METHODS:
            raise unknown_name("method", self.method, METHODS)
        if self.routing not in ROUTINGS:
            raise unknown_name("routing", self.routing, ROUTINGS)
        if not self.target_modules:
            raise ConfigError("target_modules", self.target_modules, "name at least one module")
        for name in self.target_modules:
            if name not in LLAMA_TARGET_MODULES:
                raise unknown_name("target module", name, LLAMA_TARGET_MODULES)
        if not self.ranks:
            raise ConfigError("ranks", self.ranks, "give at least one rank")
        for rank in self.ranks:
            if not isinstance(rank, int) or rank <= 0:
                raise ConfigError("ranks", self.ranks, "every rank must be an integer > 0")
        largest, smallest = self.expert_schedule.largest(), self.expert_schedule.smallest()
        if len(self.ranks) > largest:
            raise ConfigError(
                "ranks",
                self.ranks,
                f"{len(self.ranks)} ranks but no layer has more than {largest} experts, so "
                f"ranks[{largest}:] would never be used; give at most {largest}",
            )
        if self.alphas is not None:
            if len(self.alphas) != len(self.ranks):
                raise ConfigError("alphas", self.alphas, f"give one alpha per rank ({len(self.ranks)})")
            if any(not alpha > 0 for alpha in self.alphas):
                raise ConfigError("alphas", self.alphas, "every alpha must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", self.dropout, "must lie in [0, 1)")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError("temperature", self.temperature, "tau must be a finite number > 0")
        if self.top_k is not None:
            if self.routing != "soft":
                raise ConfigError("top_k", self.top_k, "top-k applies to routing 'soft' only; set it to null")
            if not isinstance(self.top_k, int) or not 1 <= self.top_k <= smallest:
                raise ConfigError(
                    "top_k",
                    self.top_k,
                    f"must be an integer in [1, {smallest}] (the fewest experts in a layer)",
                )
        if self.routing == "none" and largest != 1:
            raise ConfigError(
                "routing",
                self.routing,
                f"'none' means one expert per layer, but the schedule gives up to {largest}",
            )
        if self.routing == "task":
            self._validate_task_routing()
        if self.num_base_experts < 0 or (self.num_base_experts > 0 and self.num_base_experts >= smallest):
            raise ConfigError(
                "num_base_experts",
                self.num_base_experts,
                f"must be >= 0 and fewer than the fewest experts in a layer ({smallest}), "
                "so that every layer keeps at least one specialist",
            )
        if self.num_base_experts and self.routing != "soft":
            raise ConfigError("num_base_experts", self.num_base_experts, "base experts need routing 'soft'")
        for name in ("base_l2_weight", "balance_weight", "preservation_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(name, getattr(self, name), "must be >= 0")
        if not self.base_lr_scale > 0:
            raise ConfigError("base_lr_scale", self.base_lr_scale, "must be > 0")
        if not 0.0 < self.preservation_delta < 1.0:
            raise ConfigError("preservation_delta", self.preservation_delta, "must lie in (0, 1)")
        if self.preservation_weight > 0 and self.num_base_experts == 0:
            raise ConfigError(
                "preservation_weight",
                self.preservation_weight,
                "needs num_base_experts >= 1 to preserve into",
            )

    def _validate_task_routing(self) -> None:
        if not self.task_names:
            raise ConfigError("task_names", self.task_names, "routing 'task' needs one training task name per expert")
        if len(set(self.task_names)) != len(self.task_names):
            raise ConfigError("task_names", self.task_names, "task names must be unique")
        schedule = self.expert_schedule
        if schedule.kind != "uniform" or schedule.num_experts != len(self.task_names):
            raise ConfigError(
                "expert_schedule",
                dataclasses.asdict(schedule),
                f"routing 'task' needs a uniform schedule with num_experts = {len(self.task_names)} "
                "(one expert per task)",
            )
        for eval_task, task in self.eval_task_map.items():
            if task not in self.task_names:
                raise unknown_name(f"training task for eval task {eval_task!r} in eval_task_map", task, self.task_names)
        if self.fallback_task is not None and self.fallback_task not in self.task_names:
            raise unknown_name("fallback_task", self.fallback_task, self.task_names)

    # ----------------------------------------------------------------------------------------------
    def experts_per_layer(self, num_layers: int) -> list[int]:
        return self.expert_schedule.experts_per_layer(num_layers)

    def expert_ranks(self, num_experts: int) -> list[int]:
        return [self.ranks[i % len(self.ranks)] for i in range(num_experts)]

    def expert_alphas(self, num_experts: int) -> list[float]:
        if self.alphas is None:
            return [2.0 * rank for rank in self.expert_ranks(num_experts)]
        return [self.alphas[i % len(self.alphas)] for i in range(num_experts)]

    def task_index(self, task_name: str) -> int:
        if task_name not in self.task_names:
            raise unknown_name("training task", task_name, self.task_names)
        return self.task_names.index(task_name)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["target_modules"] = list(self.target_modules)
        data["ranks"] = list(self.ranks)
        data["alphas"] = None if self.alphas is None else list(self.alphas)
        data["task_names"] = list(self.task_names)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterConfig:
        return _build(cls, data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> AdapterConfig:
        if name not in PRESETS:
            raise unknown_name("preset", name, PRESETS)
        merged = {**PRESETS[name], **overrides}
        if "expert_schedule" in overrides and isinstance(overrides["expert_schedule"], Mapping):
            merged["expert_schedule"] = {
                **PRESETS[name].get("expert_schedule", {}),
                **overrides["expert_schedule"],
            }
        return _build(cls, merged)

    def replace(self, **changes: Any) -> AdapterConfig:
        return _build(AdapterConfig, {**self.to_dict(), **changes})


def _build(cls: type, data: Mapping[str, Any]) -> Any:
    """Construct a config dataclass, naming any key it does not know."""
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise unknown_name(f"{cls.__name__} field", key, known)
    return cls(**data)


# The four methods of the comparison, plus the paper's own Llama-3-8B setting. Everything not named
# here takes the dataclass default, so the presets differ only where the methods differ.
PRESETS: dict[str, dict[str, Any]] = {
    # Plain LoRA: one rank-16 expert per module, no router.
    "lora": {
        "method": "lora",
        "expert_schedule": {"kind": "uniform", "num_experts": 1},
        "ranks": (16,),
        "routing": "none",
    },
    # Multi-LoRA: one rank-8 LoRA per training task, hard-routed by the batch's task id; at evaluation
    # each lm-eval task goes to the expert the task registry names for it.
    "multi_lora": {
        "method": "multi_lora",
        "expert_schedule": {"kind": "uniform", "num_experts": len(TRAINING_TASKS)},
        "ranks": (8,),
        "routing": "task",
        "task_names": TRAINING_TASKS,
        "eval_task_map": DEFAULT_EVAL_TASK_MAP,
    },
    # Uniform MoE-LoRA: N = 4 in every layer, soft routing at a fixed tau = 1, load balancing only.
    "uniform_moe": {
        "method": "uniform_moe",
        "expert_schedule": {"kind": "uniform", "num_experts": 4},
        "ranks": (8,),
        "routing": "soft",
        "temperature": 1.0,
        "learn_temperature": False,
        "balance_weight": 0.01,
    },
    # Med-MoE-LoRA at laptop scale: the paper's asymmetric step schedule (2 experts below 2L/3, 8
    # above), mixed ranks, learnable tau, one base expert per layer with knowledge preservation.
    "med_moe_lora": {
        "method": "med_moe_lora",
        "expert_schedule": {"kind": "step", "min_experts": 2, "max_experts": 8, "split_fraction": 2 / 3},
        "ranks": (8, 16),
        "routing": "soft",
        "learn_temperature": True,
        "num_base_experts": 1,
        "base_lr_scale": 0.5,
        "base_l2_weight": 1e-4,
        "balance_weight": 0.01,
        "preservation_weight": 0.01,
    },
}
# The paper's Llama-3-8B setting: Med-MoE-LoRA with ranks r_i in {8, 16, 32} and top-2 sparse routing.
PRESETS["paper"] = {
    **PRESETS["med_moe_lora"],
    "base_model": "meta-llama/Meta-Llama-3-8B",
    "ranks": (8, 16, 32),
    "top_k": 2,
}


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` from the command line, the value parsed as YAML (`ranks=[8,16]`, `top_k=2`)."""
    import yaml

    if "=" not in text:
        raise UserError(f"override {text!r} is not of the form key=value (e.g. top_k=2)")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)
