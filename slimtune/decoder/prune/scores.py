"""Scores: how much each layer, run of layers, FFN neuron and KV group matters, measured on a few
calibration pairs (`calibration_pairs` training pairs)."""

from __future__ import annotations

from ..chat import PairDataset, collate
from ...stage import StageContext
from .surgery import decoder_layers


def _batches(tokenizer, ctx: StageContext, n: int, max_length: int | None, size: int = 8):
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

