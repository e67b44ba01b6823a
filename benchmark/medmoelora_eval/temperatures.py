"""The router temperatures an adapter learned: tau = exp(log_temperature) per soft-routed module."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from medmoelora.errors import UserError

LAYER = re.compile(r"layers\.(\d+)\.")
TEMPERATURE_KEY = ".router.log_temperature"


def read_temperatures(adapter: Path) -> pd.DataFrame:
    """tau = exp(log_temperature) of every router in an adapter, with its module path and layer."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(adapter))
    except (OSError, SafetensorError) as error:
        message = f"{adapter}: cannot read it as safetensors ({error}); give an adapter_model.safetensors"
        raise UserError(message) from None
    rows = [
        {"module": key.removesuffix(TEMPERATURE_KEY), "layer": int(LAYER.search(key).group(1)), "tau": float(np.exp(t))}
        for key, t in sorted(tensors.items())
        if key.endswith(TEMPERATURE_KEY)
    ]
    if not rows:
        raise UserError(f"{adapter} has no {TEMPERATURE_KEY} tensors (LoRA or Multi-LoRA?); pass a soft-routed adapter")
    return pd.DataFrame.from_records(rows)
