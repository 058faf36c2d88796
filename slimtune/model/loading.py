"""The one way slimtune calls transformers' loaders: never running a folder's own code, never
unpickling weights. Below `folders.py` (and the converters it calls), so they all share it.
"""

from __future__ import annotations


def from_pretrained(cls, path, **kwargs):
    """`cls.from_pretrained(path, **kwargs)` for any transformers config, tokenizer or model class,
    never running the folder's own code (trust_remote_code=False: transformers raises instead of
    asking on stdin) and, for a model, reading safetensors only (never a pickle)."""
    # by name, not issubclass: importing PreTrainedModel imports torch, which a tokenizer never needs
    if hasattr(cls, "_model_mapping") or any(c.__name__ == "PreTrainedModel" for c in getattr(cls, "__mro__", ())):
        kwargs["use_safetensors"] = True
    return cls.from_pretrained(path, trust_remote_code=False, **kwargs)


def from_config(cls, config, **kwargs):
    """`cls.from_config(config)` for an Auto model class, never running code the config points at."""
    return cls.from_config(config, trust_remote_code=False, **kwargs)
