"""The stage methods, one module per technique; importing this package registers each in
`slimtune.stage.METHODS`. A new method is its own module (config + `@register`ed apply) and one
name in the import below. A method imports the layers below it (model, train, measure,
artifacts), never another method."""

from ..stage import METHODS, Artifact, Method, StageContext, StageResult, register
from . import adapters, distill, finetune, multitask, onnx_compact, onnx_int8, quantize, sharing, vocab  # noqa: F401,E402
from . import prune  # noqa: F401  (prune, prune_structured)

__all__ = ["METHODS", "Artifact", "Method", "StageContext", "StageResult", "register"]
