"""Pruning: importance scores, masks, schedules and physical removal (`scores`), and the `prune`
(unstructured) and `prune_structured` stages (`stages`)."""

from .stages import MaskCallback, PruneConfig, StructuredConfig, prune, prune_structured

__all__ = ["MaskCallback", "PruneConfig", "StructuredConfig", "prune", "prune_structured"]
