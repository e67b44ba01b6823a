"""Med-MoE-LoRA: a mixture of LoRA experts for domain adaptation without forgetting, and its baselines.

LoRA, Multi-LoRA, uniform MoE-LoRA and Med-MoE-LoRA are presets of one `AdapterConfig` and run the
same layer (`MoELoRALinear`); see README.md for the API in a few lines.
"""

from medmoelora.config import PRESETS, AdapterConfig, ExpertSchedule
from medmoelora.errors import ConfigError, UserError
from medmoelora.layer import MoELoRALinear, RoutingContext
from medmoelora.model import MoELoRAModel, inject_adapter
from medmoelora.routing_stats import routing_stats, track_routing, warn_on_collapse
from medmoelora.serialization import export_peft, load_adapter, save_adapter

__all__ = [
    "PRESETS",
    "AdapterConfig",
    "ConfigError",
    "ExpertSchedule",
    "MoELoRALinear",
    "MoELoRAModel",
    "RoutingContext",
    "UserError",
    "export_peft",
    "inject_adapter",
    "load_adapter",
    "routing_stats",
    "save_adapter",
    "track_routing",
    "warn_on_collapse",
]
