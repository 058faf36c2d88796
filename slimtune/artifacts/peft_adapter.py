"""A PEFT stage's folder: the model plus `adapter/` (PEFT's own files and a small marker).

LoRA and IA3 are merged after training: the folder's weights are the merged model and the
adapter is kept beside them for the record (it loads as a plain HF folder). Prompt, prefix and
P-tuning cannot be merged (virtual tokens): the folder's weights are the base model as it went
into the stage, and loading applies the adapter on top.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import SlimtuneError
from ..model.folders import first_line, pickled_weights
from . import hf

ADAPTER_DIR = "adapter"
MARKER = "slimtune.json"  # in ADAPTER_DIR: {"merged": bool, "source": path}


def record(folder: Path) -> dict | None:
    """The marker of `folder`'s adapter ({"merged": bool, "source": path}), or None without one."""
    marker = Path(folder) / ADAPTER_DIR / MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def detect(folder: Path) -> bool:
    """Only an unmerged adapter needs this loader; a merged one is an ordinary HF folder."""
    rec = record(folder)
    return rec is not None and not rec.get("merged", True)


def save(folder: Path, model, tokenizer, adapter: Path, base=None) -> dict:
    """`base` (the unmerged stages' model before PEFT) or `model`, plus a copy of `adapter`."""
    hf.save(folder, base if base is not None else model, tokenizer)
    shutil.copytree(adapter, Path(folder) / ADAPTER_DIR)
    return {}


def write_adapter(peft_model, folder: Path, merged: bool, source: str) -> Path:
    """PEFT's save_pretrained of the adapter alone, plus the marker this format detects."""
    peft_model.save_pretrained(folder)
    (Path(folder) / MARKER).write_text(json.dumps({"merged": merged, "source": str(source)}))
    return Path(folder)


def load(folder: Path, config, new_head: dict | None = None):
    from peft import PeftModel

    from ..model.compat import expose_past_key_values

    adapter = Path(folder) / ADAPTER_DIR
    if not (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_model.bin").is_file():
        raise pickled_weights(adapter / "adapter_model.bin")  # PEFT would unpickle it
    model = hf.load(folder, config, new_head)
    expose_past_key_values(model)  # prefix tuning on transformers >= 5.24 (see model/compat.py)
    try:
        return PeftModel.from_pretrained(model, adapter).eval()
    except Exception as e:  # peft raises several kinds for a bad adapter folder
        raise SlimtuneError(f"{folder}/{ADAPTER_DIR}: cannot load PEFT adapter: {first_line(e)}") from None
