"""Surgery: physically removing whole layers or, in every layer, FFN neurons and KV groups, so the
saved folder is an ordinary smaller model of the same architecture."""

from __future__ import annotations

from ...errors import SlimtuneError


def decoder_layers(model) -> "torch.nn.ModuleList":
    import torch

    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise SlimtuneError(f"{type(model).__name__}: prune_layers needs a Llama-style decoder (model.layers)")
    return layers



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

