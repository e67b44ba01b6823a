"""The adapter config: one validated dataclass that expresses all four methods.

LoRA, Multi-LoRA, uniform MoE-LoRA and Med-MoE-LoRA are presets of this one config, so that the
comparison between them runs the same code and differs only in the knobs below. Validation runs on
creation; every error names the field, the value received and what is allowed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

from medmoelora.errors import ConfigError, UserError, unknown_name
from medmoelora.tasks import DEFAULT_EVAL_TASK_MAP, TRAINING_TASKS
from medmoelora.validation import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    build,
    coerce_fields,
)

Method = Literal["lora", "multi_lora", "uniform_moe", "med_moe_lora"]
Routing = Literal["none", "task", "soft"]
ScheduleKind = Literal["uniform", "step", "power"]
# Llama-family projection names; a layer index comes from the `layers.<i>.` part of a module path.
TargetModule = Literal["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
OpenFraction = Annotated[float, Range(gt=0, lt=1)]

LLAMA_TARGET_MODULES: tuple[str, ...] = get_args(TargetModule)
METHODS: tuple[str, ...] = get_args(Method)
ROUTINGS: tuple[str, ...] = get_args(Routing)
SCHEDULES: tuple[str, ...] = get_args(ScheduleKind)
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
    num_experts: PositiveInt = 4
    min_experts: PositiveInt = 2
    max_experts: PositiveInt = 8
    split_fraction: OpenFraction = 2 / 3
    gamma: PositiveFloat = 1.0
    inverted: bool = False

    def __post_init__(self) -> None:
        coerce_fields(self, prefix="expert_schedule.")  # types and ranges, from the hints above
        if self.min_experts > self.max_experts:
            raise ConfigError(
                "expert_schedule.min_experts",
                self.min_experts,
                f"must be <= max_experts ({self.max_experts})",
            )

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

    method: Method = "med_moe_lora"
    base_model: str | None = None
    target_modules: tuple[TargetModule, ...] = LLAMA_TARGET_MODULES
    expert_schedule: ExpertSchedule = field(default_factory=ExpertSchedule)
    ranks: tuple[PositiveInt, ...] = (8,)  # one rank (`ranks: 8`) is a one-entry list
    alphas: tuple[PositiveFloat, ...] | None = None
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0
    routing: Routing = "soft"
    top_k: PositiveInt | None = None
    temperature: PositiveFloat = 1.0
    learn_temperature: bool = False
    num_base_experts: NonNegativeInt = 0
    base_lr_scale: PositiveFloat = 1.0
    base_l2_weight: NonNegativeFloat = 0.0
    balance_weight: NonNegativeFloat = 0.0
    preservation_weight: NonNegativeFloat = 0.0
    preservation_delta: OpenFraction = 0.5
    task_names: tuple[str, ...] = ()
    eval_task_map: Mapping[str, str] = field(default_factory=dict)
    fallback_task: str | None = None

    def __post_init__(self) -> None:
        # Types and ranges from the hints above (lists from YAML/JSON become tuples: hashable, frozen),
        # then the rules that relate fields.
        coerce_fields(self)
        self._validate()

    # ----------------------------------------------------------------------------------------------
    def _validate(self) -> None:
        if not self.target_modules:
            raise ConfigError("target_modules", self.target_modules, "name at least one module")
        if not self.ranks:
            raise ConfigError("ranks", self.ranks, "give at least one rank")
        largest, smallest = self.expert_schedule.largest(), self.expert_schedule.smallest()
        if len(self.ranks) > largest:
            raise ConfigError(
                "ranks",
                self.ranks,
                f"{len(self.ranks)} ranks but no layer has more than {largest} experts, so "
                f"ranks[{largest}:] would never be used; give at most {largest}",
            )
        if self.alphas is not None and len(self.alphas) != len(self.ranks):
            raise ConfigError("alphas", self.alphas, f"give one alpha per rank ({len(self.ranks)})")
        if self.top_k is not None:
            if self.routing != "soft":
                raise ConfigError("top_k", self.top_k, "top-k applies to routing 'soft' only; set it to null")
            if self.top_k > smallest:
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
        if self.num_base_experts > 0 and self.num_base_experts >= smallest:
            raise ConfigError(
                "num_base_experts",
                self.num_base_experts,
                f"must be >= 0 and fewer than the fewest experts in a layer ({smallest}), "
                "so that every layer keeps at least one specialist",
            )
        if self.num_base_experts and self.routing != "soft":
            raise ConfigError("num_base_experts", self.num_base_experts, "base experts need routing 'soft'")
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
        return build(cls, data)

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
        return build(cls, merged)

    def replace(self, **changes: Any) -> AdapterConfig:
        return build(AdapterConfig, {**self.to_dict(), **changes})


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
    # preservation_weight 1.0, 100 times balance_weight: the paper gives no value, and at 0.01 (equal to
    # the balance weight) the routers of a 40-step SmolLM2-135M run sent general and medical tokens to
    # the base expert alike (shares within 0.02 of each other in all 30 layers). At 1.0 the general
    # share is above the medical one in every layer and projection. The loss's own optimum separates
    # the domains (base share 0.75 vs 0.25 with N = 2, 0.30 vs 0.045 with N = 8, delta 0.5) and also
    # keeps the specialists balanced among themselves, so the balance loss stays a light collapse guard.
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
        "preservation_weight": 1.0,
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

    key, equals, raw = text.partition("=")
    if not equals or not key.strip():
        raise UserError(f"override {text!r} is not of the form key=value (e.g. top_k=2)")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise UserError(
            f"override {text!r}: the value is not valid YAML ({yaml_problem(error)}); e.g. ranks=[8,16]"
        ) from None


def yaml_problem(error: Exception) -> str:
    """PyYAML's error in one line: the problem and where (its own text spans several lines)."""
    problem = getattr(error, "problem", None) or (str(error).strip().splitlines() or [type(error).__name__])[0]
    mark = getattr(error, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem
