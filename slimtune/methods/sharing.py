"""Parameter sharing, retrofitted ALBERT-style: groups of layers of a pretrained BERT become one
block each (initialised from the group's mean or its first layer), then recover by fine-tuning.

The result is a SlimBERT (model/slim_bert.py) with `num_hidden_layers` unique blocks run in
`layer_order`: as deep as before, each shared tensor stored once (save_pretrained writes three
blocks for MiniLM-L6 in pairs), and loadable with the Auto classes. Sharing saves storage, not
time: every layer position still runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SlimtuneError, one_of
from ..model.structure import check_bert, counts
from ..stage import StageContext, StageResult, register
from ..train.config import RecoveryConfig
from ..train.loop import train
from ..train.teacher import recovery_objective, recovery_set


@dataclass
class ShareConfig(RecoveryConfig):
    group_size: int = 2  # adjacent layers per shared block: 6 layers, 2 -> blocks {0,1} {2,3} {4,5}
    groups: list[list[int]] | None = None  # or name the groups (0-based layers; every layer once, in order)
    init: str = "mean"  # mean: the average of the group's weights | first: the group's first layer

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of("init", self.init, ("mean", "first"), "share_layers")
        if self.group_size < 1:
            raise SlimtuneError("share_layers: group_size must be >= 1")


def layer_groups(n: int, cfg: ShareConfig) -> list[list[int]]:
    groups = cfg.groups or [list(range(i, min(i + cfg.group_size, n))) for i in range(0, n, cfg.group_size)]
    if sorted(i for g in groups for i in g) != list(range(n)) or any(not g for g in groups):
        raise SlimtuneError(f"share_layers: groups {groups} must name each of the {n} layers exactly once")
    return groups


def share(model, groups: list[list[int]], init: str = "mean"):
    """A SlimBERT whose block j is the mean (or first) of the layers in groups[j], run in order."""
    import torch

    from ..model.slim_bert import SlimBertForSequenceClassification, slim_config

    check_bert(model, "layer sharing")
    c = counts(model)
    for g in groups:
        if len({(c["heads"][i], c["ffn"][i]) for i in g}) > 1:
            raise SlimtuneError(f"share_layers: layers {g} have different widths (pruned differently); they cannot share weights")
    order = [next(j for j, g in enumerate(groups) if i in g) for i in range(c["layers"])]
    config = slim_config(model.config, num_hidden_layers=len(groups), layer_order=order,
                         layer_heads=[c["heads"][g[0]] for g in groups], layer_intermediate=[c["ffn"][g[0]] for g in groups])
    prefix = f"{model.base_model_prefix}.encoder.layer."
    state = model.state_dict()
    new_state = {k: v for k, v in state.items() if not k.startswith(prefix)}
    for j, g in enumerate(groups):
        for key in (k[len(f"{prefix}{g[0]}."):] for k in state if k.startswith(f"{prefix}{g[0]}.")):
            tensors = [state[f"{prefix}{i}.{key}"] for i in g]
            new_state[f"{prefix}{j}.{key}"] = torch.stack(tensors).mean(0) if init == "mean" else tensors[0].clone()
    new = SlimBertForSequenceClassification(config)
    new.load_state_dict(new_state, strict=True)
    new.config._attn_implementation = model.config._attn_implementation
    return new.eval()


@register("share_layers", ShareConfig)
def share_layers(model, tokenizer, cfg: ShareConfig, ctx: StageContext):
    """ALBERT-style cross-layer sharing retrofitted onto a trained BERT, then recovery training."""
    check_bert(model, "layer sharing")  # before counting layers and computing teacher logits
    n = counts(model)["layers"]
    groups = layer_groups(n, cfg)
    params_before = sum(p.numel() for p in model.parameters())
    data = recovery_set(model, tokenizer, cfg, ctx) if cfg.recover else None  # teacher: the unshared model
    model = share(model, groups, cfg.init)
    params_after = sum(p.numel() for p in model.parameters())
    ctx.log(f"{n} layers -> {len(groups)} shared blocks {groups}; {params_before:,} -> {params_after:,} parameters")
    info = {"groups": groups, "layer_order": model.config.layer_order, "params_before": params_before,
            "params_removed": params_before - params_after}
    if cfg.recover:
        model.requires_grad_(True)
        info |= train(model, tokenizer, cfg, ctx, loss=recovery_objective(cfg, ctx), train_set=data, extra_columns=("teacher_logits",))
    return StageResult(model, tokenizer, info)
