"""The .pth registration: ``--model medmoelora`` exists and every built-in model still does."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.lm_eval.helpers import REPO

# In a fresh interpreter (where the .pth has run): importing the registry alone must not register us,
# or the registry would be non-empty and get_model would never import lm_eval.models (the built-ins).
CHECK = """
from lm_eval.api.registry import get_model, model_registry
assert len(model_registry) == 0, list(model_registry)
from lm_eval.models.huggingface import HFLM
assert get_model("hf") is HFLM
from lm_eval.models import MODEL_MAPPING
from lm_eval.models.dummy import DummyLM
from medmoelora_eval.lm_model import MedMoELoRALM
assert get_model("dummy") is DummyLM and get_model("medmoelora") is MedMoELoRALM
missing = set(MODEL_MAPPING) - set(model_registry)
assert not missing, missing
"""


def test_pth_is_installed_in_site_packages() -> None:
    pth = Path(sysconfig.get_paths()["purelib"]) / "medmoelora_eval.pth"
    assert pth.is_file(), f"{pth} is missing: reinstall the project (pip install -e .), whose build step ships it"
    assert pth.read_text() == (REPO / "benchmark" / "medmoelora_eval" / "medmoelora_eval.pth").read_text()


def test_fresh_interpreter_has_medmoelora_and_every_built_in_model() -> None:
    run = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
