"""Every stage method of a `task: generate` recipe, registered: importing this module fills
GEN_METHODS (baseline, full, lora, weight_only from methods.py; prune_layers, prune_width from
prune.py). No torch."""

from __future__ import annotations

from . import prune  # noqa: F401  (registers prune_layers, prune_width)
from .methods import GEN_METHODS, GenContext  # noqa: F401
