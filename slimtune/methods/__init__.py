"""The stage methods of classification, one module per technique; importing this package registers
each in `slimtune.stage.METHODS` (METHODS here is classify's part of it, the live dict). A new
method is its own module (config + `@register`ed apply) and one name in the import below. A method
imports the layers below it (model, train, measure, artifacts), never another method."""

from ..stage import Artifact, Method, StageContext, StageResult, methods_for, register
from ..tasks.names import CLASSIFY

METHODS = methods_for(CLASSIFY)  # the live dict: name -> Method
from . import adapters, distill, finetune, multitask, onnx_compact, onnx_int8, quantize, sharing, vocab  # noqa: F401,E402
from . import prune  # noqa: F401  (prune, prune_structured)

__all__ = ["METHODS", "Artifact", "Method", "StageContext", "StageResult", "register"]
