"""The TF-IDF floor's folder, without pickle: `floor.safetensors` holds the idf weights,
coefficients and intercepts as tensors, the vocabulary as UTF-8 bytes (terms joined by newlines,
with each term's byte length: a character n-gram can hold a newline) and, in its metadata, the
analyzer (word or character n-grams); `config.json` holds the label names. `load_floor` rebuilds
scikit-learn's vectorizer from those, so the floor is evaluated and benchmarked by the same code as
every other artifact (a `Predictor`). What the floor is (its vectorizer) and fitting it are
`measure/floor.py`, below this module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import SlimtuneError
from ..measure.floor import ANALYZERS, KIND, vectorizer
from ..measure.predictors import Predictor

FLOOR_FILE = "floor.safetensors"


def detect(folder: Path) -> bool:
    return (Path(folder) / FLOOR_FILE).is_file()


def save(folder: Path, model, tokenizer, label_names: list[str], info: dict) -> dict:
    """`model` is the pair (fitted TfidfVectorizer, fitted LogisticRegression); there is no tokenizer."""
    vec, clf = model
    from safetensors.numpy import save_file

    folder = Path(folder)
    terms = sorted(vec.vocabulary_, key=vec.vocabulary_.get)
    # C order: scikit-learn's multi-class coef_ is Fortran-ordered, and safetensors.numpy writes an
    # array's memory as it lies under a row-major shape (3-class tweets: the loaded floor was random)
    tensors = {
        "idf": np.ascontiguousarray(vec.idf_, dtype=np.float32),
        "coef": np.ascontiguousarray(clf.coef_, dtype=np.float32),
        "intercept": np.ascontiguousarray(clf.intercept_, dtype=np.float32),
        "vocabulary": np.frombuffer("\n".join(terms).encode("utf-8"), dtype=np.uint8).copy(),
        # each term's byte length: a character n-gram can hold a newline (scikit-learn keeps a single one)
        "term_bytes": np.array([len(term.encode("utf-8")) for term in terms], dtype=np.int64),
    }
    analyzer = vec.analyzer
    lo, hi = ANALYZERS[analyzer]
    save_file(tensors, str(folder / FLOOR_FILE),
              metadata={"kind": KIND, "analyzer": analyzer, "ngram_range": f"{lo},{hi}", "sublinear_tf": "true"})
    config = {"slimtune_kind": KIND, "id2label": dict(enumerate(label_names)), "C": info["C"], "analyzer": analyzer}
    (folder / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return {}


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
    from safetensors import safe_open
    from safetensors.numpy import load_file

    folder = Path(folder)
    try:
        t = load_file(str(folder / FLOOR_FILE))
        with safe_open(str(folder / FLOOR_FILE), framework="numpy") as f:
            analyzer = (f.metadata() or {}).get("analyzer", "word")  # floors saved before the choice: words
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SlimtuneError(f"{folder}: cannot load the TF-IDF floor: {e}") from None
    names = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    if label_names is not None and list(label_names) != names:
        raise SlimtuneError(f"{folder}: floor was trained for labels {names}, but the data has {list(label_names)}")
    blob = t["vocabulary"].tobytes()
    if "term_bytes" in t:  # terms cut by their lengths (the newlines between them skipped)
        ends = np.cumsum(t["term_bytes"] + 1) - 1
        terms = [blob[e - n:e].decode("utf-8") for e, n in zip(ends.tolist(), t["term_bytes"].tolist())]
    else:  # floors saved before term_bytes: word terms, never holding a newline
        terms = blob.decode("utf-8").split("\n")
    if analyzer not in ANALYZERS:
        raise SlimtuneError(f"{folder}: unknown TF-IDF analyzer {analyzer!r} (known: {', '.join(ANALYZERS)})")
    vec = vectorizer(vocabulary={term: i for i, term in enumerate(terms)}, analyzer=analyzer)
    vec.idf_ = t["idf"]
    return FloorPredictor(vec, t["coef"], t["intercept"], names)


def predictor(folder: Path, max_length: int, labels: list[str] | None = None, task: str | None = None, threads: int | None = None):
    return load_floor(folder, labels)
