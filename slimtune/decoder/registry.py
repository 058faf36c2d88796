"""Every stage method of a `task: generate` recipe, registered: importing this module fills
GEN_METHODS (stage.py's registry: baseline, full, lora, weight_only from methods.py; prune_layers,
prune_width from prune/). No torch."""

from __future__ import annotations

from . import methods, prune  # noqa: F401  (register baseline, full, lora, weight_only; prune_layers, prune_width)
from .stage import GEN_METHODS, GenContext  # noqa: F401
