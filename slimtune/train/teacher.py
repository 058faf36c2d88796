"""Teacher outputs for training: logits computed once per (teacher, texts, max_length) and cached
in the run folder (safetensors, atomic), and the labelled rows that carry them.

Used by distillation (the teacher is the incoming model or a named one) and by recovery after
surgery (the teacher is the model before pruning or sharing, when `alpha` < 1). Under several
processes (`distributed`) rank 0 computes them once; the other ranks read the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from .. import distributed
from .config import RecoveryConfig
from .loop import EncodedDataset


def _digest(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def teacher_logits(teacher, tokenizer, texts: list[str], max_length: int, cache_dir: Path, log, passes=None):
    """Teacher logits (a tensor (N, K)) for `texts`, read from / written to `cache_dir`; and whether reused.
    The seconds go to `passes` (measure/passes.py: no max_minutes bounds them) under "teacher".

    Under several processes rank 0 computes and caches them first; the others then read the cache.
    """
    with distributed.main_first(), (passes.timed("teacher") if passes else contextlib.nullcontext()):
        return _teacher_logits(teacher, tokenizer, texts, max_length, cache_dir, log)


def _teacher_logits(teacher, tokenizer, texts: list[str], max_length: int, cache_dir: Path, log):
    import torch
    from safetensors.torch import load_file, save_file

    from ..measure.predictors import TorchPredictor, batched_logits

    key = hashlib.sha256((_digest(teacher) + json.dumps([max_length, texts])).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"teacher-logits-{key}.safetensors"
    if path.is_file():
        log(f"teacher logits: reusing {path.name}")
        return load_file(path)["logits"], True
    log(f"teacher logits: computing for {len(texts)} texts (cached as {path.name})")
    logits = torch.from_numpy(batched_logits(TorchPredictor(teacher, tokenizer, max_length), texts, 64, progress="teacher logits"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"logits": logits.contiguous()}, str(tmp))
    tmp.replace(path)
    return logits, False


def attach(data: EncodedDataset, logits) -> EncodedDataset:
    """Put each row's teacher logits in its `teacher_logits` column."""
    for row, t in zip(data.rows, logits):
        row["teacher_logits"] = t
    return data


def recovery_set(model, tokenizer, cfg: RecoveryConfig, ctx) -> EncodedDataset:
    """Labelled training rows, with the unchanged model's logits when distilling (alpha < 1)."""
    data = EncodedDataset(tokenizer, ctx.splits.train, cfg.max_length)
    if cfg.alpha < 1:
        logits, _ = teacher_logits(model, tokenizer, ctx.splits.train.texts, cfg.max_length, ctx.cache_dir or ctx.work_dir,
                                   ctx.log, passes=ctx.passes)
        attach(data, logits)
    return data


def recovery_objective(cfg: RecoveryConfig, ctx, l1: float = 0.0, l1_weights: list | None = None):
    """CE (weighted by cfg.class_weight), plus T^2 KL to the unchanged model's logits (1 - alpha),
    plus an optional L1 term."""
    from .loop import class_weights_for
    from .losses import objective

    return objective({"ce": cfg.alpha, "kd": 1 - cfg.alpha, "l1": l1}, {"ce": 1.0, "l1": l1},
                     temperature=cfg.temperature, l1_weights=l1_weights, class_weights=class_weights_for(cfg, ctx))
