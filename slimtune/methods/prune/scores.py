"""Pruning algorithms: importance scores, masks, schedules and physical removal (BERT family).

Unstructured: a 0/1 mask per weight matrix chosen by a score (|w|, or movement -sum(w * grad)),
globally or per matrix, to an exact sparsity; the masks are re-applied after every optimizer step
so recovery training cannot regrow pruned weights. Zeros alone make no dense kernel faster, so the
report calls such a model "size-only" unless a speed-up is measured.

Structured: attention heads and FFN neurons are scored as groups (magnitude: L1 norm of the
group's weights; Taylor: (sum over the group of w * dL/dw)^2, averaged over calibration batches,
Molchanov et al. 2019) and then *physically removed*: smaller matrices, a
`SlimBertForSequenceClassification` (model/slim_bert.py) with per-layer widths. Whole layers can be dropped
too. torch's `torch.nn.utils.prune` only masks (the model stays as large and as slow) and
transformers 5 removed `prune_heads`, so removal is done here with `prune_linear_layer`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ...errors import SlimtuneError
from ...model.structure import bert_layers as _layers, check_bert, counts, group_weights, head_size  # noqa: F401  (counts: re-exported for tests and callers)



# ---- unstructured --------------------------------------------------------------------------


def prunable_weights(model, include_embeddings: bool = False) -> dict[str, nn.Parameter]:
    """The encoder's Linear weight matrices (and, optionally, the word embeddings).

    The classification head and pooler are left dense: they are tiny and every prediction
    passes through them."""
    base = getattr(model, model.base_model_prefix)
    out = {}
    for name, mod in base.named_modules():
        if isinstance(mod, nn.Linear) and not name.startswith("pooler"):
            out[f"{model.base_model_prefix}.{name}.weight"] = mod.weight
    if include_embeddings:
        emb = base.get_input_embeddings()
        out[f"{model.base_model_prefix}.embeddings.word_embeddings.weight"] = emb.weight
    if not out:
        raise SlimtuneError(f"{type(model).__name__}: no Linear layers to prune")
    return out


def masks_for(scores: dict[str, torch.Tensor], sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """0/1 masks removing exactly round(sparsity * n) lowest-scored weights (globally or per matrix)."""
    if not 0 <= sparsity < 1:
        raise SlimtuneError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope == "layer":
        return {n: _lowest_off(s.reshape(-1), round(sparsity * s.numel())).reshape(s.shape) for n, s in scores.items()}
    if scope != "global":
        raise SlimtuneError(f"scope {scope!r} is not one of global, layer")
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    keep = _lowest_off(flat, round(sparsity * flat.numel()))
    out, i = {}, 0
    for n, s in scores.items():
        out[n] = keep[i : i + s.numel()].reshape(s.shape)
        i += s.numel()
    return out


def _lowest_off(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A mask with exactly the k lowest scores off: a kthvalue threshold (linear time; a full sort
    of MiniLM's 22.7M weights took 12 s), then as many ties at the threshold as still needed."""
    flat = scores.reshape(-1).float()
    mask = torch.ones(flat.numel(), dtype=torch.bool)
    if k > 0:
        threshold = flat.kthvalue(k).values
        below = flat < threshold
        mask[below] = False
        need = k - int(below.sum())
        mask[(flat == threshold).nonzero().squeeze(1)[:need]] = False
    return mask


def unused_token_rows(tokenizer, texts: list[str], vocab_rows: int, max_length: int) -> torch.Tensor:
    """Bool per embedding row: True where the token never occurs in `texts` (specials count as used).

    Their rows get no gradient and only matter for unseen words at test time, so pruning them
    first spares the weights the task uses."""
    used = torch.zeros(vocab_rows, dtype=torch.bool)
    for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]:
        used[torch.tensor(ids, dtype=torch.long)] = True
    used[torch.tensor([i for i in tokenizer.all_special_ids if i < vocab_rows], dtype=torch.long)] = True
    return ~used


def apply_masks(weights: dict[str, nn.Parameter], masks: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, w in weights.items():
            w.mul_(masks[n].to(w.dtype))


def sparsity_report(weights: dict[str, torch.Tensor]) -> dict:
    zeros = {n: int((w == 0).sum()) for n, w in weights.items()}
    total = sum(w.numel() for w in weights.values())
    return {
        "sparsity": sum(zeros.values()) / total,
        "pruned_weights": sum(zeros.values()),
        "prunable_weights": total,
        "layer_sparsity": {n: round(zeros[n] / w.numel(), 4) for n, w in weights.items()},
    }


def cubic_schedule(target: float, rounds: int, total_steps: int, fraction: float = 0.7, initial: float = 0.0) -> dict[int, float]:
    """{step: sparsity}: s_k = s_f + (s_i - s_f) * (1 - k/n)^3 at n evenly spaced steps within the
    first `fraction` of training (Zhu & Gupta 2017), so the last part of training only recovers."""
    rounds = max(1, rounds)
    end = max(rounds, int(total_steps * fraction))
    return {max(1, round(end * k / rounds)): target + (initial - target) * (1 - k / rounds) ** 3 for k in range(1, rounds + 1)}


# ---- structured ----------------------------------------------------------------------------


def _row_groups(t: torch.Tensor, size: int) -> torch.Tensor:  # (out, in) -> (groups, size*in) sums
    return t.reshape(-1, size, *t.shape[1:]).flatten(1)


def group_scores(model, kind: str = "magnitude", grads: dict | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Scores per head and per FFN neuron, layer by layer: ([heads of layer i], [neurons of layer i]).

    magnitude: sum |w| over the group's weights and biases. taylor: needs `grads`, a dict from
    parameter to the accumulated score input (see `taylor_scores`)."""
    d = head_size(model)
    head_s, ffn_s = [], []
    for g in group_weights(model):
        if kind == "magnitude":
            f = lambda p: p.detach().abs()  # noqa: E731
        else:
            f = lambda p: grads[p]  # noqa: E731  (per-parameter w * grad, summed per group below)
        h = sum(_row_groups(f(m.weight), d).sum(1) + _row_groups(f(m.bias).unsqueeze(1), d).sum(1) for m in (g["q"], g["k"], g["v"]))
        h = h + _row_groups(f(g["o"].weight).t(), d).sum(1)
        n = f(g["inter"].weight).sum(1) + f(g["inter"].bias) + f(g["out"].weight).sum(0)
        head_s.append(h)
        ffn_s.append(n)
    return head_s, ffn_s


def taylor_scores(model, batches) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """First-order Taylor importance: per batch (sum over the group of w * dL/dw)^2, averaged."""
    was_training = model.training
    model.eval()
    params = [p for g in group_weights(model) for m in (g["q"], g["k"], g["v"], g["o"], g["inter"], g["out"]) for p in (m.weight, m.bias)]
    req = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    total_h, total_f, n = None, None, 0
    for batch in batches:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        wg = {p: (p.detach() * p.grad) for p in params}
        h, f = group_scores(model, "taylor", wg)
        h, f = [x ** 2 for x in h], [x ** 2 for x in f]
        total_h = h if total_h is None else [a + b for a, b in zip(total_h, h)]
        total_f = f if total_f is None else [a + b for a, b in zip(total_f, f)]
        n += 1
    if n == 0:
        raise SlimtuneError("taylor scores need at least one calibration batch")
    model.zero_grad(set_to_none=True)
    for p, r in req.items():
        p.requires_grad_(r)
    model.train(was_training)
    return [x / n for x in total_h], [x / n for x in total_f]


def choose(scores: list[torch.Tensor], drop: int, scope: str = "global", minimum: int = 1) -> list[list[int]]:
    """Indices to KEEP per layer after removing the `drop` groups with the lowest scores.

    global: one ranking across layers; layer: each layer loses its share (drop * its size /
    total). Each layer keeps at least `minimum` groups (a layer without heads or neurons is no
    longer a layer: drop whole layers instead)."""
    total = sum(s.numel() for s in scores)
    if not 0 <= drop < total:
        raise SlimtuneError(f"cannot remove {drop} of {total} groups")
    if scope == "layer":
        out = []
        for s in scores:
            k = min(round(drop * s.numel() / total), s.numel() - minimum)
            out.append(sorted(torch.argsort(s, stable=True)[k:].tolist()))
        return out
    if scope != "global":
        raise SlimtuneError(f"scope {scope!r} is not one of global, layer")
    order = sorted((float(v), li, j) for li, s in enumerate(scores) for j, v in enumerate(s.tolist()))
    removed = [set() for _ in scores]
    for _, li, j in order:
        if drop == 0:
            break
        if scores[li].numel() - len(removed[li]) > minimum:
            removed[li].add(j)
            drop -= 1
    return [sorted(set(range(s.numel())) - removed[li]) for li, s in enumerate(scores)]


def mask_structure(model, keep_heads: list[list[int]], keep_ffn: list[list[int]]) -> None:
    """Zero the output projections of removed heads / neurons in place: the same function as the
    physically pruned model, kept at full size (used to check removal, and for reference)."""
    d = head_size(model)
    with torch.no_grad():
        for g, kh, kf in zip(group_weights(model), keep_heads, keep_ffn):
            cols = torch.ones(g["o"].in_features, dtype=torch.bool)
            cols[_head_index(kh, d)] = False
            g["o"].weight[:, cols] = 0
            cols = torch.ones(g["out"].in_features, dtype=torch.bool)
            cols[torch.tensor(kf, dtype=torch.long)] = False
            g["out"].weight[:, cols] = 0


def _head_index(heads: list[int], d: int) -> torch.Tensor:
    return torch.tensor([h * d + i for h in heads for i in range(d)], dtype=torch.long)


def remove_structure(model, keep_heads: list[list[int]], keep_ffn: list[list[int]], keep_layers: list[int] | None = None):
    """Physically remove heads, FFN neurons and layers; returns a SlimBERT classifier."""
    from transformers.pytorch_utils import prune_linear_layer

    from ...model.slim_bert import SlimBertForSequenceClassification, slim_config

    check_bert(model)
    d = head_size(model)
    layers = _layers(model)
    keep_layers = list(range(len(layers))) if keep_layers is None else sorted(keep_layers)
    if not keep_layers:
        raise SlimtuneError("structured pruning must keep at least one layer")
    for layer, kh, kf in zip(layers, keep_heads, keep_ffn):
        att = layer.attention.self
        idx = _head_index(kh, d)
        att.query = prune_linear_layer(att.query, idx, dim=0)
        att.key = prune_linear_layer(att.key, idx, dim=0)
        att.value = prune_linear_layer(att.value, idx, dim=0)
        layer.attention.output.dense = prune_linear_layer(layer.attention.output.dense, idx, dim=1)
        att.num_attention_heads, att.all_head_size = len(kh), len(kh) * d
        fidx = torch.tensor(kf, dtype=torch.long)
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, fidx, dim=0)
        layer.output.dense = prune_linear_layer(layer.output.dense, fidx, dim=1)
    config = slim_config(
        model.config, num_hidden_layers=len(keep_layers), layer_order=None,
        layer_heads=[len(keep_heads[i]) for i in keep_layers],
        layer_intermediate=[len(keep_ffn[i]) for i in keep_layers],
    )
    state = model.state_dict()
    prefix = f"{model.base_model_prefix}.encoder.layer."
    renamed = {}
    for k, v in state.items():
        if k.startswith(prefix):
            i, rest = k[len(prefix):].split(".", 1)
            if int(i) not in keep_layers:
                continue
            k = f"{prefix}{keep_layers.index(int(i))}.{rest}"
        renamed[k] = v
    new = SlimBertForSequenceClassification(config)
    new.load_state_dict(renamed, strict=True)
    new.config._attn_implementation = model.config._attn_implementation
    return new.eval()


def layer_scores(head_s: list[torch.Tensor], ffn_s: list[torch.Tensor]) -> list[float]:
    """A layer's importance: the sum of its heads' and neurons' scores, each kind normalised."""
    hs = sum(float(s.sum()) for s in head_s) or 1.0
    fs = sum(float(s.sum()) for s in ffn_s) or 1.0
    return [float(h.sum()) / hs + float(f.sum()) / fs for h, f in zip(head_s, ffn_s)]


def cumulative_fractions(target: float, rounds: int) -> list[float]:
    """Fraction of the original groups removed after each round, cubic from 0 to `target`."""
    rounds = max(1, rounds)
    return [target * (1 - (1 - k / rounds) ** 3) for k in range(1, rounds + 1)]
