"""Compact on-disk storage for a model: each weight tensor encoded by a codec, decoded on load.

`save_pretrained` writes dense fp32, so a model that is 80% zeros, or whose weights fit in 4 bits,
is no smaller on disk. safetensors has no sparse or packed-integer tensor type, and neither
transformers nor torch has a loader for one, so this module adds a small format of its own on top
of safetensors (no pickle):

    folder/config.json            the model's config (labels included), as save_pretrained writes it
    folder/slimtune.safetensors   encoded tensors: `name` (stored as is) or `name::part`
                                  (e.g. `...weight::mask`, `...weight::values`); the metadata
                                  entry "slimtune" says, per tensor, which codec and its settings
    folder/tokenizer files

`load(folder)` builds the model from its config and decodes every tensor back into a dense
state dict, so everything downstream (evaluation, ONNX export, further stages) sees an ordinary
model. A codec is registered by name in `codecs.CODECS`; a "runtime" (e.g. run in bf16 after
loading) in RUNTIMES.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..errors import SlimtuneError

# codecs.py (torch at import) holds the codec registry; it is imported where tensors are coded, so
# finding a compact folder (`detect`) costs no torch import

WEIGHTS_FILE = "slimtune.safetensors"
FORMAT = "slimtune-compact/1"


RUNTIMES: dict[str, Callable] = {}  # name -> fn(model) -> model, applied after loading


# --- save / load ------------------------------------------------------------------------------

def rules(spec) -> list[tuple]:
    """Normalise a storage spec into [(regex or None, codec name, options)], checked.

    A spec is a codec name ("int8"), a mapping {"codec": name, **options} ({"codec": "int4",
    "group_size": 64}), or a list of such mappings, each optionally with "match" (a regex searched
    in the tensor name); the first entry that matches a tensor (and that its codec applies to)
    encodes it, e.g. [{"match": "embeddings", "codec": "int8"}, {"codec": "kmeans", "centroids": 16}].
    """
    import re

    from .codecs import CODECS

    items = spec if isinstance(spec, list) else [spec]
    out = []
    for item in items:
        entry = {"codec": item} if isinstance(item, str) else dict(item) if isinstance(item, dict) else None
        if entry is None or "codec" not in entry:
            raise SlimtuneError(f"storage spec {item!r}: expected a codec name or a mapping with 'codec'")
        name, match = entry.pop("codec"), entry.pop("match", None)
        if name not in CODECS:
            raise SlimtuneError(f"storage codec {name!r} is not one of {', '.join(CODECS)}")
        try:
            regex = re.compile(match) if match is not None else None
        except re.error as e:
            raise SlimtuneError(f"storage spec match {match!r}: not a regular expression ({e})") from None
        out.append((regex, name, entry))
    return out


def save(folder: Path, model, tokenizer, codec, runtime: str | None = None) -> dict:
    """Write `model` to `folder` (which exists), each tensor encoded as `codec` says (see `rules`).

    Returns the report's fact: {"storage": the spec}."""
    from safetensors.torch import save_file

    from .codecs import CODECS

    table = rules(codec)
    if runtime is not None and runtime not in RUNTIMES:
        raise SlimtuneError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES) or 'none'}")
    tensors, index, seen = {}, {}, {}
    for name, t in model.state_dict().items():
        t = t.detach()
        # a tied tensor (a decoder's lm_head = its embedding table) is stored once, like save_pretrained does
        key = (t.data_ptr(), tuple(t.shape), t.dtype)
        if t.numel() > 1 and key in seen:
            index[name] = {"codec": None, "tied": seen[key]}
            continue
        seen[key] = name
        rule = next(((c, o) for rx, c, o in table if (rx is None or rx.search(name)) and CODECS[c].applies(name, t)), None)
        if rule:
            try:
                parts, meta = CODECS[rule[0]].encode(t, **rule[1])
            except (TypeError, ValueError) as e:  # bad option, or values the codec cannot hold
                raise SlimtuneError(f"storage codec {rule[0]!r} on {name}: {e}") from None
            tensors |= {f"{name}::{k}": v.contiguous() for k, v in parts.items()}
            index[name] = {"codec": rule[0], "meta": meta, "parts": sorted(parts)}
        else:
            tensors[name] = t.contiguous()
            index[name] = {"codec": None}
    header = {"format": FORMAT, "runtime": runtime, "tensors": index}
    save_file(tensors, str(Path(folder) / WEIGHTS_FILE), metadata={"slimtune": json.dumps(header)})
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"storage": codec}


def detect(folder: Path) -> bool:
    return (Path(folder) / WEIGHTS_FILE).is_file()


def read_state_dict(path: Path) -> tuple[dict, dict]:
    """Decode `slimtune.safetensors` into a dense state dict; returns (state dict, header)."""
    from safetensors import safe_open

    from .codecs import CODECS

    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get("slimtune", "null"))
            if not header or header.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            raw = {k: f.get_tensor(k) for k in f.keys()}
        state = {}
        for name, entry in header["tensors"].items():
            if entry.get("tied"):
                continue  # filled below, once its original is decoded
            if entry["codec"] is None:
                state[name] = raw[name]
                continue
            if entry["codec"] not in CODECS:
                raise ValueError(f"unknown codec {entry['codec']!r} for {name} (newer slimtune?)")
            parts = {p: raw[f"{name}::{p}"] for p in entry["parts"]}
            state[name] = CODECS[entry["codec"]].decode(parts, entry["meta"])
        state |= {name: state[e["tied"]] for name, e in header["tensors"].items() if e.get("tied")}
    except SlimtuneError:
        raise
    except Exception as e:  # safetensors/json/codec errors: corrupt or foreign file
        raise SlimtuneError(f"{path}: cannot read compact weights: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return state, header


def load(folder: Path, config, new_head: dict | None = None):
    """Build the model described by `config` (a classifier, or a causal LM when its architecture
    says so) and fill it from the compact weights in `folder`."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from ..model.folders import from_config

    if new_head:
        raise SlimtuneError(f"{folder}: compact weights must hold a trained classifier")

    state, header = read_state_dict(Path(folder) / WEIGHTS_FILE)
    causal = any(a.endswith("ForCausalLM") for a in getattr(config, "architectures", None) or [])
    model = from_config(AutoModelForCausalLM if causal else AutoModelForSequenceClassification, config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k in dict(model.named_parameters())]
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise SlimtuneError(f"{folder}/{WEIGHTS_FILE}: weights do not fit the config ({what})")
    runtime = header.get("runtime")
    if runtime:
        if runtime not in RUNTIMES:
            raise SlimtuneError(f"{folder}: needs runtime {runtime!r}, which this slimtune does not have")
        model = RUNTIMES[runtime](model)
    return model.eval()


# --- runtimes: what to do with the decoded fp32 model before it runs --------------------------

def _bf16(model):
    import torch

    return model.to(torch.bfloat16)


def _torch_int8_dynamic(model):
    """torch's dynamic int8 on every Linear (per-channel weight scales; activations quantized
    per call). A dynamically quantized model cannot be save_pretrained'ed, so it is rebuilt here."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 marks torch.ao.quantization deprecated
        return quantize_dynamic(model.float(), {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


RUNTIMES |= {"bf16": _bf16, "torch-int8-dynamic": _torch_int8_dynamic}
