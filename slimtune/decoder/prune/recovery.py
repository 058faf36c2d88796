"""Recovery: training the pruned model on the response tokens, with distillation from the unpruned
model's top-k logits (computed once, before surgery, and cached in the run's cache folder)."""

from __future__ import annotations

import hashlib
import json

from ..chat import IGNORE, PairDataset, collate
from ...stage import StageContext
from ..stage import train_pairs, training_context


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


def _cached_teacher(model, tokenizer, cfg, ctx: StageContext, data: PairDataset):
    """The teacher's top-k logits over `data` (cfg: a prune config, its max_length and top_k), cached once."""
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



def _prune_and_recover(model, tokenizer, cfg, ctx: StageContext, surgery) -> dict:
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

    from ...train.loop import count_trainable, train

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

