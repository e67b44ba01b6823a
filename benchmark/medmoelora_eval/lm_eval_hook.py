"""Registers ``lm_eval --model medmoelora`` with the stock lm-eval CLI, from a .pth file in site-packages.

lm-eval 0.4.13 has no plugin entry point for models, so ``medmoelora_eval.pth`` (installed next to the
packages by ``pip install``; see `medmoelora_eval.build`) calls `install` at interpreter start-up.

Registering at start-up would break every built-in model: ``lm_eval.api.registry.get_model`` imports
``lm_eval.models`` (whose import registers ``hf``, ``vllm``, ``dummy``, ...) only while the model registry
is empty, so an entry added first would keep the built-ins out and ``--model hf`` would be unknown.
`install` therefore only puts a meta-path finder in place that waits for ``lm_eval.models`` to be
imported, and registers a lazy ``"module:Class"`` target right after that module has run, beside the
built-ins, exactly as they are registered. Nothing but the standard library is imported at start-up,
and the finder removes itself once it has fired.
"""

from __future__ import annotations

import importlib.abc
import sys
import warnings
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

MODEL_NAME = "medmoelora"
MODEL_TARGET = "medmoelora_eval.lm_model:MedMoELoRALM"
WATCHED_MODULE = "lm_eval.models"


def register() -> None:
    """Add ``medmoelora`` to lm-eval's model registry as a lazy target (the class loads on first use)."""
    from lm_eval.api import registry

    model_registry = getattr(registry, "model_registry", None)
    if model_registry is None:  # lm-eval < 0.4.10: a plain dict, no lazy targets
        from medmoelora_eval.lm_model import MedMoELoRALM

        registry.register_model(MODEL_NAME)(MedMoELoRALM)
    elif MODEL_NAME not in model_registry:  # the registry refuses a second, different target
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)


def _register_quietly() -> None:
    # A failure here must never break `import lm_eval.models`, and with it every built-in model.
    try:
        register()
    except Exception as error:
        warnings.warn(f"medmoelora: could not register `--model {MODEL_NAME}` with lm-eval: {error}", stacklevel=2)


class _RegisteringLoader(importlib.abc.Loader):
    """Runs the real loader of ``lm_eval.models``, then registers our model."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        uninstall()  # fired: later imports and reloads need no help
        _register_quietly()

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, ... of the real loader
        return getattr(self._loader, name)


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader that the other finders return for ``lm_eval.models``."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != WATCHED_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


_FINDER = _AfterImportFinder()


def install() -> None:
    """Register now if ``lm_eval.models`` is already imported, else as soon as it is."""
    if WATCHED_MODULE in sys.modules:
        _register_quietly()
    elif _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
