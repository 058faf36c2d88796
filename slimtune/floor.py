"""The floor: a classical TF-IDF + linear classifier on the same split, in every report.

A fine-tuned transformer that does not beat word and word-pair counts with a linear model is not
worth its cost, and a user would never know without this row. Measured on a news dataset of long
articles, MiniLM-L6 truncated at 64 tokens scored ~2 points *below* TF-IDF + a linear SVM.

The floor is TF-IDF over 1-2-grams (sublinear tf, terms in >= 2 training texts) and a logistic
regression whose C is chosen on the validation split (never test). It is saved without pickle:
`floor.safetensors` holds the idf weights, coefficients and intercepts as tensors and the
vocabulary as UTF-8 bytes (terms joined by newlines: a term never contains one), and
`config.json` the label names. `load_floor` rebuilds scikit-learn's vectorizer from those, so the
artifact is evaluated and benchmarked by the same code as every other one (a `Predictor`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import SlimtuneError
from .predictors import Predictor

FLOOR_FILE = "floor.safetensors"
KIND = "tfidf-logreg"
C_GRID = (1.0, 4.0, 16.0)
MIN_DF = 2


def _vectorizer(vocabulary=None, min_df: int = MIN_DF):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1 if vocabulary else min_df,
                           dtype=np.float32, vocabulary=vocabulary)


def fit_floor(splits, seed: int = 42) -> tuple[object, object, dict]:
    """Fit TF-IDF + logistic regression on train; C picked on validation accuracy."""
    from sklearn.linear_model import LogisticRegression

    train = splits.train
    min_df = MIN_DF if len(train) >= 50 else 1  # tiny data: every term counts
    vec = _vectorizer(min_df=min_df)
    try:
        x = vec.fit_transform(train.texts)
    except ValueError:  # only stop words / one-character words: no term survives
        vec = _vectorizer(min_df=1)
        x = vec.fit_transform(train.texts)
    best, tried = None, []
    for c in (C_GRID if len(splits.val) else (4.0,)):
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, train.labels)
        val = float((clf.predict(vec.transform(splits.val.texts)) == np.array(splits.val.labels)).mean()) if len(splits.val) else None
        tried.append({"C": c, "val_accuracy": val})
        if best is None or (val is not None and val > best[1]):
            best = (clf, val, c)
    clf, val, c = best
    return vec, clf, {"C": c, "val_accuracy": val, "C_tried": tried, "vocabulary": len(vec.vocabulary_), "min_df": min_df}


def save_floor(vec, clf, label_names: list[str], folder: Path, info: dict) -> None:
    from safetensors.numpy import save_file

    folder = Path(folder)
    terms = sorted(vec.vocabulary_, key=vec.vocabulary_.get)
    tensors = {
        "idf": vec.idf_.astype(np.float32),
        "coef": clf.coef_.astype(np.float32),
        "intercept": clf.intercept_.astype(np.float32),
        "vocabulary": np.frombuffer("\n".join(terms).encode("utf-8"), dtype=np.uint8).copy(),
    }
    save_file(tensors, str(folder / FLOOR_FILE), metadata={"kind": KIND, "ngram_range": "1,2", "sublinear_tf": "true"})
    config = {"slimtune_kind": KIND, "id2label": dict(enumerate(label_names)), "C": info["C"]}
    (folder / "config.json").write_text(json.dumps(config, indent=2))


class FloorPredictor(Predictor):
    """TF-IDF + linear model behind the Predictor interface: texts in, one score per label out."""

    kind = "sklearn"

    def __init__(self, vec, coef: np.ndarray, intercept: np.ndarray, label_names: list[str]):
        self.vec, self.coef, self.intercept = vec, coef, intercept
        self.label_names = list(label_names)

    def logits(self, texts: list[str]) -> np.ndarray:
        scores = np.asarray(self.vec.transform(list(texts)) @ self.coef.T) + self.intercept
        if scores.shape[1] == 1:  # binary: one score s for label 1; [-s/2, s/2] keeps the argmax and margin
            scores = np.hstack([-scores / 2, scores / 2])
        return scores.astype(np.float32)

    def num_params(self) -> int:
        return int(self.coef.size + self.intercept.size + self.vec.idf_.size)


def load_floor(folder: str | Path, label_names: list[str] | None = None) -> FloorPredictor:
    from safetensors.numpy import load_file

    folder = Path(folder)
    try:
        t = load_file(str(folder / FLOOR_FILE))
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise SlimtuneError(f"{folder}: cannot load the TF-IDF floor: {e}") from None
    names = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    if label_names is not None and list(label_names) != names:
        raise SlimtuneError(f"{folder}: floor was trained for labels {names}, but the data has {list(label_names)}")
    terms = t["vocabulary"].tobytes().decode("utf-8").split("\n")
    vec = _vectorizer(vocabulary={term: i for i, term in enumerate(terms)})
    vec.idf_ = t["idf"]
    return FloorPredictor(vec, t["coef"], t["intercept"], names)


def floor_row(splits, ev, out: Path, log, fingerprint: dict) -> dict:
    """Fit (or reuse) the floor in OUT/floor and measure it like any artifact; a report row."""
    from .exporters import atomic_dir
    from .runner import _finished, _write_json, measure

    folder = Path(out) / "floor"
    done = _finished(folder, fingerprint)
    if done:
        log("floor (TF-IDF + logistic regression): measured earlier, reused")
    else:
        log("floor: TF-IDF 1-2-grams + logistic regression (C chosen on validation)")
        with atomic_dir(folder) as tmp:
            vec, clf, info = fit_floor(splits)
            save_floor(vec, clf, splits.label_names, tmp, info)
            metrics, _ = measure(tmp, splits, ev, log)
            done = {"metrics": metrics | info, "fingerprint": fingerprint}
            _write_json(tmp / "metrics.json", done)
    return {"name": "tfidf-floor", "method": KIND, "artifact": "floor", "metrics": done["metrics"]}


def verdict(report: dict) -> str | None:
    """One plain sentence: does the best transformer artifact beat the floor on test accuracy?"""
    floor = report.get("floor")
    rows = [s for s in report.get("stages", []) if "accuracy" in s["metrics"]]
    if not floor or not rows:
        return None
    best = max(rows, key=lambda s: s["metrics"]["accuracy"])
    gap = 100 * (best["metrics"]["accuracy"] - floor["metrics"]["accuracy"])
    if gap <= 0:
        return (f"**The transformer does not beat the TF-IDF floor here**: the best artifact ({best['name']}, "
                f"{best['metrics']['accuracy']:.4f}) is {-gap:.2f} points at or below TF-IDF + logistic regression "
                f"({floor['metrics']['accuracy']:.4f}) on the same test split. Use the floor, or fix the cause "
                "(e.g. texts cut short: see the data profile's token lengths).")
    return (f"The best artifact ({best['name']}, {best['metrics']['accuracy']:.4f}) beats the TF-IDF floor "
            f"({floor['metrics']['accuracy']:.4f}) by {gap:.2f} points on the same test split.")
