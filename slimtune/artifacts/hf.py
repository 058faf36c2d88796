"""The plain Hugging Face folder: `save_pretrained` (safetensors, config with id2label) + tokenizer.

Every other torch format is this folder plus something (a PEFT adapter, more task heads), or
replaces its weights file (compact codecs). SlimBERT folders load here too: importing
`model.slim_bert` registers its model type with the Auto classes.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SlimtuneError
from ..model.folders import first_line, from_pretrained


def detect(folder: Path) -> bool:
    return (Path(folder) / "config.json").is_file()


def save(folder: Path, model, tokenizer) -> dict:
    """save_pretrained + tokenizer, into an existing folder."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {}


def load(folder: Path, config, new_head: dict | None = None):
    """The classifier in `folder`; `new_head` (num_labels, id2label, label2id) gives a base model one."""
    from transformers import AutoModelForSequenceClassification

    from ..model import slim_bert  # noqa: F401  (registers model_type slimtune_bert)

    try:
        return from_pretrained(AutoModelForSequenceClassification, folder, **(new_head or {})).eval()
    except Exception as e:  # safetensors, torch and transformers each raise their own kinds
        raise SlimtuneError(f"{folder}: cannot load weights: {first_line(e)}") from None
