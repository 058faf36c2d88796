"""Task metrics on held-out data: accuracy, macro F1 / precision / recall, confusion matrix.

scikit-learn computes them (`evaluate.load` fetches metric code from the hub and fails offline).
"""

from __future__ import annotations

import numpy as np

from ..data import TextSet
from .predictors import Predictor, batched_logits


def classification_metrics(labels, preds, num_labels: int) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    p, r, f1, _ = precision_recall_fscore_support(
        labels, preds, average="macro", labels=list(range(num_labels)), zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "f1_macro": float(f1),
        "precision_macro": float(p),
        "recall_macro": float(r),
        "confusion_matrix": confusion_matrix(labels, preds, labels=list(range(num_labels))).tolist(),
    }


def evaluate(pred: Predictor, data: TextSet, batch_size: int = 32, progress: str | None = None,
             logits: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """Metrics of `pred` on `data`, and the logits (kept for parity checks between artifacts).

    The one way slimtune scores a model on labelled texts: stages, exports, guards and the CLI
    all come here. `logits`: already computed for `data` (not recomputed)."""
    if logits is None:
        logits = batched_logits(pred, data.texts, batch_size, progress)
    metrics = classification_metrics(data.labels, logits.argmax(axis=1), len(pred.label_names))
    metrics["n_examples"] = len(data)
    return metrics, logits


def parity(source_logits: np.ndarray, logits: np.ndarray) -> dict:
    """How far an export's logits are from those of the model it came from."""
    return {
        "max_abs_logit_diff": float(np.abs(source_logits - logits).max()),
        "argmax_agreement": float((source_logits.argmax(1) == logits.argmax(1)).mean()),
    }
