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
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ..errors import SlimtuneError, check_ranges
from ..stage import StageResult
from .chat import IGNORE, PairDataset, collate
from .methods import GenContext, GenTrainConfig, register, train_pairs, training_context

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


def decoder_layers(model) -> "torch.nn.ModuleList":
    import torch

    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise SlimtuneError(f"{type(model).__name__}: prune_layers needs a Llama-style decoder (model.layers)")
    return layers


def _batches(tokenizer, ctx: GenContext, n: int, max_length: int | None, size: int = 8):
    data = PairDataset(tokenizer, ctx.splits.train.prompts[:n], ctx.splits.train.responses[:n], ctx.splits.system, max_length)
    fn = collate(tokenizer.pad_token_id)
    return [fn(data.rows[i : i + size]) for i in range(0, len(data), size)]


def _state_pair_means(model, batches, pairs: list[tuple[int, int]], measure, skip_first: bool = False) -> list[float]:
    """For each (a, b) in `pairs`, the mean of `measure(h_a, h_b)` (one value per token) over the real
    tokens of the calibration batches, where h_i is the input of layer i and h_L the last layer's
    output. One forward pass per batch, hooks on every layer; `skip_first` leaves out each sequence's
    first position."""
    import torch

    layers = decoder_layers(model)
    L, states = len(layers), {}

    def hook(i):
        def fn(module, args, kwargs, output):
            states[i] = args[0] if args else kwargs["hidden_states"]
            if i == L - 1:
                states[L] = output[0] if isinstance(output, tuple) else output
        return fn

    sums, count = [0.0] * len(pairs), 0
    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with torch.inference_mode():
            for b in batches:
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
                mask = b["attention_mask"].bool().clone()
                if skip_first:
                    mask[:, 0] = False
                count += int(mask.sum())
                for j, (a, c) in enumerate(pairs):
                    sums[j] += float(measure(states[a][mask].float(), states[c][mask].float()).sum())
    finally:
        for h in handles:
            h.remove()
    return [v / max(count, 1) for v in sums]


def cosine_scores(model, batches) -> list[float]:
    """1 - mean cosine(input, output) of each layer over the real (unpadded) tokens."""
    import torch

    n = len(decoder_layers(model))
    cos = _state_pair_means(model, batches, [(i, i + 1) for i in range(n)],
                            lambda x, y: torch.nn.functional.cosine_similarity(x, y, dim=-1))
    return [1.0 - c for c in cos]


def block_distances(model, batches, n: int) -> list[float]:
    """For each start l, the mean angular distance arccos(cos(h_l, h_{l+n})) / pi between the input
    of layer l and the output of layer l + n - 1, over the real tokens after the first (the first
    position is an attention sink whose huge, nearly constant state points the same way in every
    layer and would only dilute the mean)."""
    import math

    import torch

    def angle(x, y):
        return torch.arccos(torch.nn.functional.cosine_similarity(x, y, dim=-1).clamp(-1, 1)) / math.pi

    L = len(decoder_layers(model))
    return _state_pair_means(model, batches, [(l, l + n) for l in range(L - n + 1)], angle, skip_first=True)


def loss_scores(model, batches) -> list[float]:
    """Rise of the response loss when each layer alone is skipped."""
    import torch

    inner = model.model
    full = inner.layers

    def loss() -> float:
        with torch.inference_mode():
            return sum(float(model(**b).loss) for b in batches) / len(batches)

    base, scores = loss(), []
    try:
        for i in range(len(full)):
            inner.layers = torch.nn.ModuleList([m for j, m in enumerate(full) if j != i])
            scores.append(loss() - base)
    finally:
        inner.layers = full
    return scores


def remove_layers(model, drop: list[int]) -> None:
    """Remove layers `drop` in place; kept layers keep their weights and get their new cache index."""
    import torch

    layers = decoder_layers(model)
    n = len(layers)
    bad = [i for i in drop if not 0 <= i < n]
    if bad or len(set(drop)) >= n:
        raise SlimtuneError(f"prune_layers: cannot drop {sorted(drop)} from a {n}-layer model (0..{n - 1}, at least one kept)")
    kept = [m for i, m in enumerate(layers) if i not in set(drop)]
    for new, layer in enumerate(kept):
        for sub in layer.modules():
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = new
    model.model.layers = torch.nn.ModuleList(kept)
    model.config.num_hidden_layers = len(kept)
    types = getattr(model.config, "layer_types", None)
    if isinstance(types, list) and len(types) == n:
        model.config.layer_types = [t for i, t in enumerate(types) if i not in set(drop)]


def teacher_topk(model, data: PairDataset, k: int, batch_size: int = 8) -> dict:
    """Top-k logits of `model` at every position that predicts a response token, in example order:
    values (N, k) float32, indices (N, k) int32, offsets (examples + 1,) into the N rows."""
    import torch

    rows = data.rows
    vals, idx = [None] * len(rows), [None] * len(rows)
    fn = collate(pad_id=0)  # right padding: the real tokens' logits do not see it (causal mask + attention mask)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))  # similar lengths batched: little padding
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            b = fn([{key: rows[i][key] for key in ("input_ids", "attention_mask", "labels")} for i in chunk])
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
            for j, i in enumerate(chunk):
                at = b["labels"][j, 1:] != IGNORE
                top = logits[j][at].float().topk(min(k, logits.shape[-1]), dim=-1)
                vals[i], idx[i] = top.values, top.indices.to(torch.int32)
    offsets = torch.tensor([0] + [len(v) for v in vals], dtype=torch.int64).cumsum(0)
    return {"values": torch.cat(vals), "indices": torch.cat(idx), "offsets": offsets}


def _cached_teacher(model, tokenizer, cfg: PruneLayersConfig, ctx: GenContext, data: PairDataset):
    from safetensors.torch import load_file, save_file

    key = hashlib.sha256(json.dumps([str(ctx.teacher), ctx.splits.digest, cfg.max_length, cfg.top_k]).encode()).hexdigest()[:16]
    path = (ctx.cache_dir or ctx.work_dir) / f"teacher-topk-{key}.safetensors"
    if path.is_file():
        ctx.log(f"  teacher logits: cached ({path.name})")
        return load_file(path)
    ctx.log(f"  teacher logits: top-{cfg.top_k} over {data.response_tokens:,} response tokens (once; cached)")
    out = teacher_topk(model, data, cfg.top_k)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(out, str(tmp))
    tmp.replace(path)
    return out


def distill_loss(cache: dict, alpha: float, temperature: float):
    """The loss `train.loop.train` minimises, `(model, inputs) -> (loss, outputs)`: alpha x the
    response cross-entropy + (1 - alpha) x T^2 cross-entropy to the teacher's cached top-k
    distribution; each row's `example` column (kept by `extra_columns`) indexes the cache."""
    import torch

    offsets, values, indices = cache["offsets"], cache["values"], cache["indices"].long()

    def loss_fn(model, inputs):
        inputs = dict(inputs)
        examples = inputs.pop("example")
        out = model(**inputs)
        at = inputs["labels"][:, 1:] != IGNORE
        student = out.logits[:, :-1][at] / temperature  # (N, V), rows in example order
        rows = torch.cat([torch.arange(offsets[e], offsets[e + 1]) for e in examples.tolist()])
        p = torch.softmax(values[rows] / temperature, dim=-1)  # (N, k)
        logq = torch.log_softmax(student.float(), dim=-1).gather(1, indices[rows])
        kd = -(p * logq).sum(-1).mean() * temperature**2
        return alpha * out.loss + (1 - alpha) * kd, out

    return loss_fn


class _Indexed(PairDataset):
    """The training pairs, each row carrying its index into the teacher cache."""

    def __init__(self, base: PairDataset):
        self.rows = [r | {"example": i} for i, r in enumerate(base.rows)]
        self.dropped = base.dropped


@register("prune_layers", PruneLayersConfig)
def prune_layers(model, tokenizer, cfg: PruneLayersConfig, ctx: GenContext):
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


def _prune_and_recover(model, tokenizer, cfg, ctx: GenContext, surgery) -> dict:
    """The unpruned model's top-k logits first (when recovery distils, alpha < 1), then
    `surgery()` (removes structure in place, returns its facts), then recovery training."""
    distil = cfg.recover and cfg.alpha < 1
    train_set = cache = None
    if distil:
        data = PairDataset(tokenizer, ctx.splits.train.prompts, ctx.splits.train.responses, ctx.splits.system, cfg.max_length)
        cache = _cached_teacher(model, tokenizer, cfg, ctx, data)
        train_set = _Indexed(data)
    params_before = sum(p.numel() for p in model.parameters())
    info = surgery()
    info["params_removed"] = params_before - sum(p.numel() for p in model.parameters())
    if cfg.recover:
        model.requires_grad_(True)
        info |= _train_distilled(model, tokenizer, cfg, ctx, train_set, cache) if distil else train_pairs(model, tokenizer, cfg, ctx)
    return info


def _train_distilled(model, tokenizer, cfg, ctx, train_set, cache) -> dict:
    import torch

    from ..train.loop import count_trainable, train

    base = collate(tokenizer.pad_token_id)

    def collator(rows):
        batch = base([{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows])
        batch["example"] = torch.tensor([r["example"] for r in rows])
        return batch

    trainable, total = count_trainable(model)
    ctx.log(f"training {trainable:,} of {total:,} parameters, alpha {cfg.alpha} (response loss) + distillation")
    info = train(model, tokenizer, cfg, training_context(ctx), loss=distill_loss(cache, cfg.alpha, cfg.temperature),
                 train_set=train_set, extra_columns=("example",), collator=collator)
    info.pop("val_accuracy", None)
    return {"trainable_params": trainable, "total_params": total, "distilled": True, **info}


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


def width_scores(model, batches) -> tuple[list, list]:
    """Per layer: each FFN neuron's and each KV group's contribution to the layer's output on the
    calibration tokens, mean |activation| x the norm of its output-projection column (Wanda-style:
    weight x activation, grouped; Sun et al. 2023). A KV group is one KV head and its query heads,
    so grouped-query attention stays grouped."""
    import torch

    layers = decoder_layers(model)
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    per_group = cfg.num_attention_heads // cfg.num_key_value_heads
    ffn = [torch.zeros(l.mlp.down_proj.in_features) for l in layers]
    att = [torch.zeros(l.self_attn.o_proj.in_features) for l in layers]
    mask, count = {}, [0]

    def hook(store, i):
        def fn(module, args):
            x = args[0].float()[mask["m"]]  # (tokens, features) of the real tokens
            store[i] += x.abs().sum(0)
        return fn

    handles = [l.mlp.down_proj.register_forward_pre_hook(hook(ffn, i)) for i, l in enumerate(layers)]
    handles += [l.self_attn.o_proj.register_forward_pre_hook(hook(att, i)) for i, l in enumerate(layers)]
    try:
        with torch.inference_mode():
            for b in batches:
                mask["m"] = b["attention_mask"].bool()
                count[0] += int(mask["m"].sum())
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    ffn_scores = [f / count[0] * l.mlp.down_proj.weight.float().norm(dim=0) for f, l in zip(ffn, layers)]
    group_scores = []
    for a, l in zip(att, layers):
        per_feature = a / count[0] * l.self_attn.o_proj.weight.float().norm(dim=0)
        group_scores.append(per_feature.view(cfg.num_key_value_heads, per_group * head_dim).sum(-1))
    return ffn_scores, group_scores


def _keep(rows, keep, dim: int):
    import torch

    return torch.nn.Parameter(rows.detach().index_select(dim, keep).clone())


def remove_width(model, keep_ffn: list | None, keep_groups: list | None) -> None:
    """Slice every layer to the kept FFN neurons and KV groups (sorted index tensors, the same
    count in every layer, so the model stays an ordinary config-described Llama)."""
    import torch

    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    per_group = cfg.num_attention_heads // cfg.num_key_value_heads
    for i, layer in enumerate(decoder_layers(model)):
        if keep_ffn is not None:
            k = keep_ffn[i]
            for lin in (layer.mlp.gate_proj, layer.mlp.up_proj):
                lin.weight = _keep(lin.weight, k, 0)
                if lin.bias is not None:
                    lin.bias = _keep(lin.bias, k, 0)
                lin.out_features = len(k)
            layer.mlp.down_proj.weight = _keep(layer.mlp.down_proj.weight, k, 1)
            layer.mlp.down_proj.in_features = len(k)
        if keep_groups is not None:
            g = keep_groups[i]
            kv = (g[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
            q = ((g[:, None] * per_group + torch.arange(per_group))[..., None] * head_dim + torch.arange(head_dim)).reshape(-1)
            attn = layer.self_attn
            for lin, idx in ((attn.q_proj, q), (attn.k_proj, kv), (attn.v_proj, kv)):
                lin.weight = _keep(lin.weight, idx, 0)
                if lin.bias is not None:
                    lin.bias = _keep(lin.bias, idx, 0)
                lin.out_features = len(idx)
            attn.o_proj.weight = _keep(attn.o_proj.weight, q, 1)
            attn.o_proj.in_features = len(q)
    if keep_ffn is not None:
        cfg.intermediate_size = len(keep_ffn[0])
    if keep_groups is not None:
        cfg.head_dim = head_dim  # no longer hidden_size / heads
        cfg.num_key_value_heads = len(keep_groups[0])
        cfg.num_attention_heads = len(keep_groups[0]) * per_group


@register("prune_width", PruneWidthConfig)
def prune_width(model, tokenizer, cfg: PruneWidthConfig, ctx: GenContext):
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
