"""Adapters on disk: the public format of docs/adapter-format.md, and export of plain LoRA to PEFT's format.

``adapter_config.json`` holds the full `AdapterConfig`, the base model id, and every adapted module
with its layer, shapes, expert count, ranks, alphas, base experts and the experts' dtype (``dtype``;
files written before it existed mean float32). ``adapter_model.safetensors`` holds, per adapted module
path P (relative to the causal LM, e.g. ``model.layers.0.self_attn.q_proj``):

    P.experts.<i>.lora_A          [r_i, d_in]   (the module's dtype)
    P.experts.<i>.lora_B          [d_out, r_i]  (the module's dtype)
    P.router.weight               [N, d_in]     (soft routing only; float32)
    P.router.log_temperature      []            (soft routing only; float32; tau = exp of it)

In memory the experts are fused (`MoELoRALinear`); on disk they are per expert, so that the file is
readable without our code and stable when the in-memory layout changes. Loading checks both files
against each other before it copies anything: every tensor the config declares must be there with
exactly its shape and dtype, and nothing else may be.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from medmoelora import atomic
from medmoelora.config import AdapterConfig
from medmoelora.errors import UserError
from medmoelora.layer import MoELoRALinear
from medmoelora.model import MoELoRAModel, find_target_linears, inject_adapter, num_decoder_layers

FORMAT_NAME = "medmoelora-adapter"
FORMAT_VERSION = 1
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
REQUIRED_KEYS = ("format", "format_version", "config", "num_layers", "modules")
MODULE_KEYS = ("layer", "in_features", "out_features", "num_experts", "ranks", "alphas", "base_experts")
ROUTER_DTYPE = "float32"  # the router runs in fp32 whatever the model's dtype (see MoELoRALinear)
DEFAULT_EXPERT_DTYPE = "float32"  # adapters saved before module specs recorded a dtype
RESAVE_HINT = "re-save the adapter from its model (or restore both files as the training run wrote them)"


# ---- one layer <-> per-expert tensors ---------------------------------------------------------------
def layer_to_tensors(layer: MoELoRALinear) -> dict[str, torch.Tensor]:
    """Split the fused weights into per-expert tensors (the on-disk names, relative to the module)."""
    lora_A, lora_B = layer.fused_weights()  # (R, d_in), (d_out, R)
    tensors: dict[str, torch.Tensor] = {}
    start = 0
    for expert, rank in enumerate(layer.ranks):
        tensors[f"experts.{expert}.lora_A"] = lora_A[start : start + rank]  # (r_i, d_in)
        tensors[f"experts.{expert}.lora_B"] = lora_B[:, start : start + rank]  # (d_out, r_i)
        start += rank
    if layer.router is not None:
        tensors["router.weight"] = layer.router.weight  # (N, d_in)
        tensors["router.log_temperature"] = layer.log_temperature  # ()
    return {name: tensor.detach().contiguous() for name, tensor in tensors.items()}


@torch.no_grad()
def load_layer_tensors(layer: MoELoRALinear, tensors: dict[str, torch.Tensor]) -> None:
    """Copy per-expert tensors into the fused parameters (exact: copies, no arithmetic)."""
    num_base = layer.num_base_experts
    offsets = {"base": 0, "lora": 0}
    for expert, rank in enumerate(layer.ranks):
        group = "base" if expert < num_base else "lora"
        fused_A, fused_B = getattr(layer, f"{group}_A"), getattr(layer, f"{group}_B")
        start = offsets[group]
        _copy_same_shape(fused_A[start : start + rank], tensors, f"experts.{expert}.lora_A")
        _copy_same_shape(fused_B[:, start : start + rank], tensors, f"experts.{expert}.lora_B")
        offsets[group] += rank
    if layer.router is not None:
        _copy_same_shape(layer.router.weight, tensors, "router.weight")
        _copy_same_shape(layer.log_temperature, tensors, "router.log_temperature")


def _copy_same_shape(target: torch.Tensor, tensors: dict[str, torch.Tensor], name: str) -> None:
    # copy_ broadcasts: a (1, d_in) tensor would silently fill all r rows of an expert's A.
    source = tensors[name]
    if source.shape != target.shape:
        raise ValueError(f"tensor {name} has shape {list(source.shape)}, the layer needs {list(target.shape)}")
    target.copy_(source)


def module_spec(layer: MoELoRALinear, layer_index: int) -> dict[str, Any]:
    return {
        "layer": layer_index,
        "in_features": layer.base_layer.in_features,
        "out_features": layer.base_layer.out_features,
        "num_experts": layer.num_experts,
        "ranks": layer.ranks,
        "alphas": layer.alphas,
        "base_experts": list(range(layer.num_base_experts)),
        "dtype": _dtype_name(layer.lora_A.dtype),
    }


def expected_tensors(path: str, spec: dict[str, Any], routing: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor name -> (shape, dtype) that ``adapter_config.json``'s entry for module ``path`` declares."""
    d_in, d_out = spec["in_features"], spec["out_features"]
    dtype = spec.get("dtype", DEFAULT_EXPERT_DTYPE)
    expected: dict[str, tuple[tuple[int, ...], str]] = {}
    for expert, rank in enumerate(spec["ranks"]):
        expected[f"{path}.experts.{expert}.lora_A"] = ((rank, d_in), dtype)
        expected[f"{path}.experts.{expert}.lora_B"] = ((d_out, rank), dtype)
    if routing == "soft":
        expected[f"{path}.router.weight"] = ((spec["num_experts"], d_in), ROUTER_DTYPE)
        expected[f"{path}.router.log_temperature"] = ((), ROUTER_DTYPE)
    return expected


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---- whole adapter -------------------------------------------------------------------------------------
def save_adapter(adapted: MoELoRAModel, directory: str | Path) -> Path:
    """Write adapter_config.json and adapter_model.safetensors into ``directory`` (created)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = adapted.adapter_config
    base_model = config.base_model or getattr(getattr(adapted.model, "config", None), "_name_or_path", None)
    modules, tensors = {}, {}
    for path, layer in adapted.adapter_layers().items():
        modules[path] = module_spec(layer, adapted.layer_index[path])
        for name, tensor in layer_to_tensors(layer).items():
            tensors[f"{path}.{name}"] = tensor.cpu()
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "method": config.method,
        "base_model": base_model,
        "num_layers": adapted.num_layers,
        "routing": config.routing,
        "top_k": config.top_k,
        "task_names": list(config.task_names),
        "eval_task_map": dict(config.eval_task_map),
        "config": config.to_dict(),
        "modules": modules,
    }
    atomic.write_with(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    atomic.write_json(directory / CONFIG_FILE, header, indent=2)
    return directory


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """The adapter_config.json of a saved adapter, with a clear error for anything else."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise UserError(f"adapter directory {directory} does not exist; pass the directory a training run saved")
    if not config_path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise UserError(f"{directory} is not a saved adapter: it needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        header = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        reason = f"{error.msg} at line {error.lineno}"
        raise UserError(f"{config_path} is not valid JSON ({reason}); {RESAVE_HINT}") from None
    except UnicodeDecodeError:
        raise UserError(f"{config_path} is not valid JSON (not UTF-8 text); {RESAVE_HINT}") from None
    if not isinstance(header, dict):
        raise UserError(f"{config_path} holds a JSON {type(header).__name__}, not an object; {RESAVE_HINT}")
    if header.get("format") != FORMAT_NAME:
        hint = " (a PEFT adapter: load it with peft.PeftModel)" if "peft_type" in header else ""
        raise UserError(f"{config_path} is not a {FORMAT_NAME} config{hint}")
    if header.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{config_path} has format_version {header.get('format_version')}; this medmoelora reads {FORMAT_VERSION}"
        )
    _check_header_keys(header, config_path)
    return header


def _check_header_keys(header: dict[str, Any], config_path: Path) -> None:
    """Every key that loading reads is there, with the JSON type it needs."""
    missing = [key for key in REQUIRED_KEYS if key not in header]
    if missing:
        raise UserError(f"{config_path} lacks the required key {missing[0]!r}; {RESAVE_HINT}")
    for key, kind in (("config", dict), ("modules", dict), ("num_layers", int)):
        if not isinstance(header[key], kind):
            raise UserError(f"{config_path}: {key!r} must be a JSON {_json_kind(kind)}; {RESAVE_HINT}")
    for path, spec in header["modules"].items():
        if not isinstance(spec, dict):
            raise UserError(f"{config_path}: modules[{path!r}] must be a JSON object; {RESAVE_HINT}")
        missing = [key for key in MODULE_KEYS if key not in spec]
        if missing:
            raise UserError(f"{config_path}: modules[{path!r}] lacks the required key {missing[0]!r}; {RESAVE_HINT}")


def _json_kind(kind: type) -> str:
    return {dict: "object", int: "integer"}[kind]


def load_adapter(model: nn.Module, directory: str | Path) -> MoELoRAModel:
    """Inject the saved adapter into ``model`` (in place) and load its weights bit-exactly."""
    header = read_adapter_config(directory)
    _check_base_model(model, header, Path(directory))
    adapted = inject_adapter(model, AdapterConfig.from_dict(header["config"]))
    load_adapter_weights(adapted, directory)
    return adapted


def load_adapter_weights(adapted: MoELoRAModel, directory: str | Path) -> None:
    """Copy a saved adapter's weights into an injected model of the same config (e.g. to resume).

    Nothing is copied unless the config's module list matches the model and every tensor matches the
    config (`check_tensors`)."""
    directory = Path(directory)
    header = read_adapter_config(directory)
    if AdapterConfig.from_dict(header["config"]) != adapted.adapter_config:
        raise UserError(f"adapter {directory} was saved with another adapter config than this model's")
    layers = adapted.adapter_layers()
    _check_modules_match_layers(header, layers, directory / CONFIG_FILE)
    tensors = _read_weights(directory / WEIGHTS_FILE)
    check_tensors(header, tensors, directory / WEIGHTS_FILE, adapted.adapter_config.routing)
    for path, layer in layers.items():
        prefix = f"{path}."
        load_layer_tensors(layer, {name[len(prefix) :]: t for name, t in tensors.items() if name.startswith(prefix)})


def _read_weights(weights_path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{weights_path} is not a readable safetensors file ({reason}); {RESAVE_HINT}") from None


def _check_modules_match_layers(header: dict[str, Any], layers: dict[str, MoELoRALinear], config_path: Path) -> None:
    """The per-module entries of adapter_config.json describe the layers its own config builds."""
    listed, built = set(header["modules"]), set(layers)
    if listed != built:
        path = sorted(listed ^ built)[0]
        where = "lists" if path in listed else "does not list"
        raise UserError(f"{config_path} {where} module {path}, unlike the model loading it; {RESAVE_HINT}")
    for path, layer in layers.items():
        spec = header["modules"][path]
        built = {
            "in_features": layer.base_layer.in_features,
            "out_features": layer.base_layer.out_features,
            "num_experts": layer.num_experts,
            "ranks": layer.ranks,
            "alphas": layer.alphas,
        }
        for key, value in built.items():
            if spec[key] != value:
                raise UserError(
                    f"{config_path}: modules[{path!r}].{key} is {spec[key]}, but the model loading it has {value}; "
                    f"{RESAVE_HINT}"
                )


def check_tensors(header: dict[str, Any], tensors: dict[str, torch.Tensor], weights: Path, routing: str) -> None:
    """Every tensor that adapter_config.json declares is in ``tensors`` (read from ``weights``) with
    its exact shape and dtype, and no other; else one line naming the first culprit (and how many
    there are)."""
    expected: dict[str, tuple[tuple[int, ...], str]] = {}
    for path, spec in header["modules"].items():
        expected.update(expected_tensors(path, spec, routing))
    problems = []
    for name, (shape, dtype) in expected.items():
        if name not in tensors:
            problems.append(f"lacks tensor {name} ({_describe(shape, dtype)}) that {CONFIG_FILE} declares")
            continue
        found = tensors[name]
        if tuple(found.shape) != shape or _dtype_name(found.dtype) != dtype:
            problems.append(
                f"has tensor {name} as {_describe(tuple(found.shape), _dtype_name(found.dtype))}, "
                f"but {CONFIG_FILE} declares {_describe(shape, dtype)}"
            )
    problems += [f"has tensor {name}, which {CONFIG_FILE} does not declare" for name in tensors if name not in expected]
    if problems:
        more = f" (and {len(problems) - 1} more mismatched tensors)" if len(problems) > 1 else ""
        raise UserError(f"{weights} {problems[0]}{more}; {RESAVE_HINT}")


def _describe(shape: tuple[int, ...], dtype: str) -> str:
    return f"shape {list(shape)} {dtype}"


def _check_base_model(model: nn.Module, header: dict[str, Any], directory: Path) -> None:
    """Fail with one line when the adapter was made for a base model of other shapes."""
    made_for = header.get("base_model") or "another base model"
    if num_decoder_layers(model) != header["num_layers"]:
        raise UserError(
            f"adapter {directory} was made for {made_for} with {header['num_layers']} decoder layers, but this "
            f"base model has {num_decoder_layers(model)}; load it onto the base model it was trained on"
        )
    linears = find_target_linears(model, tuple(header["config"]["target_modules"]))
    for path, spec in header["modules"].items():
        if path not in linears:
            raise UserError(f"adapter {directory} adapts {path}, which this base model lacks; load it onto {made_for}")
        linear = linears[path][1]
        if (linear.in_features, linear.out_features) != (spec["in_features"], spec["out_features"]):
            raise UserError(
                f"adapter {directory} was made for {made_for}: {path} is {spec['in_features']}->{spec['out_features']} "
                f"there but {linear.in_features}->{linear.out_features} here; load it onto the base model it was "
                "trained on"
            )


# ---- PEFT export -----------------------------------------------------------------------------------------
def export_peft(adapted: MoELoRAModel, directory: str | Path) -> Path:
    """Write a plain-LoRA adapter in PEFT's own format (``PeftModel.from_pretrained`` loads it)."""
    from peft import LoraConfig

    config = adapted.adapter_config
    layers = adapted.adapter_layers()
    if config.routing != "none" or any(layer.num_experts != 1 for layer in layers.values()):
        raise UserError(
            f"only a plain LoRA adapter (preset 'lora': one expert, routing 'none') exports to PEFT; "
            f"this one is {config.method!r} with routing {config.routing!r}"
        )
    rank = config.ranks[0]
    alpha = config.expert_alphas(1)[0]
    base_model = config.base_model or getattr(getattr(adapted.model, "config", None), "_name_or_path", None)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
    ).save_pretrained(str(directory))
    tensors = {}
    for path, layer in layers.items():
        lora_A, lora_B = layer.fused_weights()
        tensors[f"base_model.model.{path}.lora_A.weight"] = lora_A.detach().contiguous().cpu()
        tensors[f"base_model.model.{path}.lora_B.weight"] = lora_B.detach().contiguous().cpu()
    atomic.write_with(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    return directory
