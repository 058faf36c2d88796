"""The parts of a classifier that methods name: encoder layers, head modules, per-layer widths.

Shared by every method that freezes, truncates, prunes, shares or wraps parts of a model, so no
method reaches into another for them. torch is imported inside the functions: a recipe is
validated without it (slimtune.recipe imports the method configs, which import this module).
"""

from __future__ import annotations

from ..errors import SlimtuneError

BERT_TYPES = ("bert", "slimtune_bert")
ADAPTER_KINDS = ("houlsby", "pfeiffer")  # SlimBERT bottleneck adapters (model/slim_bert.py)


def encoder_layers(model):
    """The longest ModuleList of transformer blocks (BERT: encoder.layer; GPT-2: h; Llama: layers)."""
    import torch.nn as nn

    lists = [m for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and name.split(".")[-1] in ("layer", "layers", "h")]
    if not lists:
        raise SlimtuneError(f"{type(model).__name__}: cannot find its encoder layers")
    return max(lists, key=len)


def layers_name(model) -> str:
    """Dotted name of the encoder's layer list, e.g. `bert.encoder.layer`."""
    layers = encoder_layers(model)
    return next(n for n, m in model.named_modules() if m is layers)


def head_names(model) -> list[str]:
    """Names of the head modules: the model's own children besides the encoder, plus its pooler."""
    base = model.base_model_prefix
    names = [n for n, m in model.named_children() if n != base and any(True for _ in m.parameters())]
    if getattr(getattr(model, base), "pooler", None) is not None:
        names.append(f"{base}.pooler")
    return names


def head_modules(model) -> list:
    return [model.get_submodule(n) for n in head_names(model)]


def freeze_all_but(model, modules: list) -> None:
    model.requires_grad_(False)
    for m in modules:
        m.requires_grad_(True)


def check_bert(model, what: str = "structured pruning") -> None:
    """Structured surgery (`what`: pruning, sharing, adapters) is written for BERT's module names."""
    kind = model.config.model_type
    if kind not in BERT_TYPES:
        raise SlimtuneError(f"{what} supports BERT-family models (model_type bert); this one is {kind!r}")
    order = getattr(model.config, "layer_order", None)
    if order is not None and order != list(range(len(order))):
        raise SlimtuneError(f"{what} of a model with shared layers is not supported; do it before share_layers")


def bert_layers(model):
    return getattr(model, model.base_model_prefix).encoder.layer


def head_size(model) -> int:
    return model.config.hidden_size // model.config.num_attention_heads


def group_weights(model) -> list[dict]:
    """Per layer, the modules holding each head / FFN neuron (as index helpers over the parameters)."""
    out = []
    for layer in bert_layers(model):
        att = layer.attention.self
        out.append({
            "heads": att.query.out_features // head_size(model),
            "q": att.query, "k": att.key, "v": att.value, "o": layer.attention.output.dense,
            "inter": layer.intermediate.dense, "out": layer.output.dense,
        })
    return out


def counts(model) -> dict:
    """Layers, and per layer the attention heads and FFN neurons it has."""
    gs = group_weights(model)
    return {"layers": len(gs), "heads": [g["heads"] for g in gs], "ffn": [g["inter"].out_features for g in gs]}


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
