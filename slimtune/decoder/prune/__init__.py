"""Pruning a decoder, then recovering by distillation: whole layers (`prune_layers`, depth) or, in
every layer, FFN neurons and grouped-query KV groups (`prune_width`, below).

Which layers: `drop_layers: [i, ...]`, or the `layers` least important by `score`:
- `cosine`: how little a layer changes its input, 1 - cos(h_in, h_out) averaged over the tokens of
  `calibration_pairs` training pairs (Men et al. 2024, "ShortGPT"; Gromov et al. 2024): a layer
  whose output points where its input did adds little;
- `loss`: how much the response loss on those pairs rises when the layer alone is skipped;
- `block`: one run of `layers` consecutive layers, the run whose input and output are closest in
  angle (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"). Scores of
  single layers ignore that removing one changes what the next receives; on SmolLM2-135M (30 -> 20,
  before recovery) the cosine choice scattered over the stack gave a held-out perplexity of ~5,900,
  the best block (layers 9-18) ~210.

Removing is physical: the layer list gets shorter, `num_hidden_layers` follows, and each kept
attention gets its new position in the KV cache (`layer_idx`), so the saved folder is an ordinary
smaller model of the same architecture. The kept layers' weights are untouched.

Recovery trains the pruned model on the response tokens with `alpha` x cross-entropy plus
(1 - alpha) x distillation from the unpruned model's logits over the response tokens. Only the
teacher's top-`top_k` logits per response token are kept (a 49,152-word vocabulary over every
response token would be gigabytes); they are computed once, before pruning, and cached in the
run's cache folder (safetensors), reused on reruns.

The package: `scores` (what to remove), `surgery` (removing it), `recovery` (training after);
below, the two stage methods and their configs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import SlimtuneError, check_ranges
from ...stage import StageContext, StageResult
from ..stage import GenTrainConfig, register
from .recovery import _prune_and_recover
from .scores import _batches, block_distances, cosine_scores, loss_scores, width_scores
from .surgery import decoder_layers, remove_layers, remove_width

SCORES = ("cosine", "loss", "block")


@dataclass
class PruneLayersConfig(GenTrainConfig):
    layers: int = 0  # how many of the least important layers to remove
    drop_layers: list[int] | None = None  # or exactly these (0-based)
    score: str = "cosine"  # cosine | loss | block
    calibration_pairs: int = 32  # training pairs the score is measured on
    recover: bool = True  # train after removing (False: report the pruned model as is)
    alpha: float = 0.5  # weight of the response cross-entropy; 1 - alpha on distillation from the unpruned model
    temperature: float = 1.0
    top_k: int = 32  # teacher logits kept per response token
    learning_rate: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges("prune_layers", self, layers=">= 0", drop_layers=">= 0")
        if (self.layers > 0) == bool(self.drop_layers):
            raise SlimtuneError("prune_layers: give exactly one of `layers: N` (> 0) or `drop_layers: [i, ...]`")
        if self.score not in SCORES:
            raise SlimtuneError(f"prune_layers: score {self.score!r} is not one of {', '.join(SCORES)}")
        if not 0 <= self.alpha <= 1 or self.temperature <= 0 or self.top_k < 1 or self.calibration_pairs < 1:
            raise SlimtuneError("prune_layers: alpha in [0, 1], temperature > 0, top_k >= 1, calibration_pairs >= 1")



@register("prune_layers", PruneLayersConfig)
def prune_layers(model, tokenizer, cfg: PruneLayersConfig, ctx: StageContext):
    """Remove the least important whole layers; recover with distillation from the unpruned model."""
    layers = decoder_layers(model)
    before = len(layers)
    if cfg.drop_layers:
        drop, scores = sorted(set(cfg.drop_layers)), None
    else:
        if cfg.layers >= before:
            raise SlimtuneError(f"prune_layers: layers={cfg.layers} but the model has {before}; at least one must stay")
        batches = _batches(tokenizer, ctx, cfg.calibration_pairs, cfg.max_length)
        if cfg.score == "block":  # scores[l]: the run of `layers` layers starting at l
            scores = block_distances(model, batches, cfg.layers)
            start = min(range(len(scores)), key=scores.__getitem__)
            drop = list(range(start, start + cfg.layers))
        else:
            scores = (cosine_scores if cfg.score == "cosine" else loss_scores)(model, batches)
            drop = sorted(sorted(range(before), key=lambda i: scores[i])[: cfg.layers])
    ctx.log(f"  removing layers {drop} of {before}" + (f" (score {cfg.score})" if scores else ""))

    def surgery() -> dict:
        remove_layers(model, drop)
        return {"pruning": "depth", "layers_before": before, "layers_after": before - len(drop), "dropped_layers": drop,
                "block_distances" if cfg.score == "block" else "layer_scores": scores, "score": cfg.score if scores else "given"}

    info = _prune_and_recover(model, tokenizer, cfg, ctx, surgery)
    return StageResult(model.eval(), tokenizer, info)



@dataclass
class PruneWidthConfig(GenTrainConfig):
    ffn: float = 0.0  # share of each layer's FFN neurons removed (the same count in every layer)
    kv_groups: int = 0  # KV heads removed per layer, each with the query heads that share it
    calibration_pairs: int = 32  # training pairs the activations are measured on
    recover: bool = True
    alpha: float = 0.5
    temperature: float = 1.0
    top_k: int = 32
    learning_rate: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.ffn < 1 or self.kv_groups < 0 or (self.ffn == 0 and self.kv_groups == 0):
            raise SlimtuneError("prune_width: give ffn (a share in (0, 1)) and/or kv_groups (>= 1)")
        if not 0 <= self.alpha <= 1 or self.temperature <= 0 or self.top_k < 1 or self.calibration_pairs < 1:
            raise SlimtuneError("prune_width: alpha in [0, 1], temperature > 0, top_k >= 1, calibration_pairs >= 1")



@register("prune_width", PruneWidthConfig)
def prune_width(model, tokenizer, cfg: PruneWidthConfig, ctx: StageContext):
    """Remove the least important FFN neurons and KV groups of every layer; recover by distillation."""
    decoder_layers(model)  # a Llama-style decoder, or a one-line error
    mc = model.config
    if cfg.kv_groups >= mc.num_key_value_heads:
        raise SlimtuneError(f"prune_width: kv_groups={cfg.kv_groups} but each layer has {mc.num_key_value_heads} KV heads; "
                            "at least one must stay")
    batches = _batches(tokenizer, ctx, cfg.calibration_pairs, cfg.max_length)
    ffn_scores, group_scores = width_scores(model, batches)
    n_ffn = mc.intermediate_size - round(cfg.ffn * mc.intermediate_size) if cfg.ffn else None
    keep_ffn = [s.topk(n_ffn).indices.sort().values for s in ffn_scores] if n_ffn else None
    n_kv = mc.num_key_value_heads - cfg.kv_groups if cfg.kv_groups else None
    keep_groups = [s.topk(n_kv).indices.sort().values for s in group_scores] if n_kv else None
    before = {"intermediate_size": mc.intermediate_size, "num_attention_heads": mc.num_attention_heads,
              "num_key_value_heads": mc.num_key_value_heads}

    def surgery() -> dict:
        remove_width(model, keep_ffn, keep_groups)
        after = {k: getattr(model.config, k) for k in before}
        ctx.log(f"  width {before} -> {after}")
        return {"pruning": "width", "before": before, "after": after,
                "kept_kv_groups": [g.tolist() for g in keep_groups] if keep_groups else None}

    info = _prune_and_recover(model, tokenizer, cfg, ctx, surgery)
    return StageResult(model.eval(), tokenizer, info)
