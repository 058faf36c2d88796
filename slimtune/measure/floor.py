"""The floor: a classical TF-IDF + linear classifier on the same split, in every report.

A fine-tuned transformer that does not beat word and word-pair counts with a linear model is not
worth its cost, and a user would never know without this row. Measured on a news dataset of long
articles, MiniLM-L6 truncated at 64 tokens scored ~2 points *below* TF-IDF + a linear SVM.

The floor is TF-IDF over 1-2-grams (sublinear tf, terms in >= 2 training texts) and a logistic
regression whose C is chosen on the validation split (never test). Its folder format
(no pickle) is `artifacts/floor.py`, which imports this module (never the reverse); the runner
fits, saves and measures it like any artifact.
"""

from __future__ import annotations

import numpy as np

KIND = "tfidf-logreg"
MIN_DF = 2
C_GRID = (1.0, 4.0, 16.0)


def vectorizer(vocabulary=None, min_df: int = MIN_DF):
    """The floor's TF-IDF: fitted here, rebuilt from its saved vocabulary by `artifacts/floor.py`."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1 if vocabulary else min_df,
                           dtype=np.float32, vocabulary=vocabulary)


def fit_floor(splits, seed: int = 42) -> tuple[object, object, dict]:
    """Fit TF-IDF + logistic regression on train; C picked on validation accuracy."""
    from sklearn.linear_model import LogisticRegression

    train = splits.train
    min_df = MIN_DF if len(train) >= 50 else 1  # tiny data: every term counts
    vec = vectorizer(min_df=min_df)
    try:
        x = vec.fit_transform(train.texts)
    except ValueError:  # only stop words / one-character words: no term survives
        vec = vectorizer(min_df=1)
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
