"""Training losses as plain functions, picked by name (TextBrewer style), over the one Trainer.

Two levels. Tensor functions (`hard_ce`, `soft_kl`, `hidden_mse`, `attention_kl`) take student and
teacher tensors and return a scalar. Loss terms (LOSSES: `ce`, `kd`, `hidden`, `attention`, `l1`,
`task_ce`) take one `Batch` (the student's outputs plus the batch's columns) and return a scalar,
or None where they do not apply. `objective(weights)` sums weight * term by name into the function
the Trainer calls, `(model, inputs) -> (loss, outputs)`. Distillation, for example, is

    ce: alpha  +  kd: (1 - alpha) * T^2 KL  +  hidden: w_hidden * MSE  +  attention: w_attn * KL

where soft_kl is scaled by T^2 so its gradient scale does not shrink as T grows (Hinton et al.).
Rows without teacher logits (validation, or training with no teacher) use `without_teacher`
(default: plain CE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

IGNORE = -100  # label of unlabelled (teacher-only) rows


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch.  logits: (B, K)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


def hard_ce(student_logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy; with `class_weights` (K,), each row counts w[y] and the mean is over the summed
    weights: sum_i w[y_i] * CE_i / sum_i w[y_i] (torch's weighted mean)."""
    return F.cross_entropy(student_logits, labels, weight=class_weights)


def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over real (non-padding) tokens.  hidden: (B, T, H); mask: (B, T)."""
    m = mask.unsqueeze(-1).to(student_hidden.dtype)
    return ((student_hidden - teacher_hidden) ** 2 * m).sum() / (m.sum() * student_hidden.shape[-1]).clamp_min(1)


def attention_kl(student_attn: torch.Tensor, teacher_attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL between attention distributions per head and query token (MiniLM / TinyBERT).

    attn: (B, heads, T, T) probabilities; heads must match (average teacher heads otherwise).
    """
    if student_attn.shape[1] != teacher_attn.shape[1]:
        teacher_attn = teacher_attn.mean(1, keepdim=True).expand_as(student_attn)
    eps = 1e-8
    kl = (teacher_attn * ((teacher_attn + eps).log() - (student_attn + eps).log())).sum(-1)  # (B, h, T)
    q = mask[:, None, :].to(kl.dtype).expand_as(kl)
    return (kl * q).sum() / q.sum().clamp_min(1)


def combined(alpha: float, temperature: float, student_logits, teacher_logits, labels, ignore_index: int = -100) -> torch.Tensor:
    """alpha * CE(labels) + (1 - alpha) * T^2 KL; alpha=1 is plain fine-tuning, alpha=0 pure distillation.

    Rows labelled `ignore_index` (unlabelled, teacher-only texts) contribute to the KL term only.
    """
    loss = student_logits.new_zeros(())
    labelled = labels != ignore_index
    if alpha > 0 and labelled.any():
        loss = loss + alpha * hard_ce(student_logits[labelled], labels[labelled])
    if alpha < 1:
        loss = loss + (1 - alpha) * soft_kl(student_logits, teacher_logits, temperature)
    return loss


@dataclass
class Batch:
    """What a loss term sees: the student's outputs and the batch's columns."""

    model: torch.nn.Module
    out: object  # the student's output: ["logits"] (B, K); hidden_states / attentions when asked
    labels: torch.Tensor  # (B,); IGNORE on teacher-only rows
    mask: torch.Tensor | None  # attention mask (B, T)
    teacher_logits: torch.Tensor | None = None  # (B, K), precomputed
    teacher_out: object = None  # the teacher's forward (hidden states / attentions), when a term needs it
    layer_map: list[int] | None = None  # student layer i learns from teacher hidden state layer_map[i]
    temperature: float = 1.0
    l1_weights: list | None = None
    task_ids: torch.Tensor | None = None
    class_weights: torch.Tensor | None = None  # (K,) for the CE term (TrainConfig.class_weight)


def ce_term(b: Batch):
    """Cross-entropy on the labelled rows."""
    labelled = b.labels != IGNORE
    if not labelled.any():
        return None
    logits, w = b.out["logits"], b.class_weights
    if w is not None:
        w = w.to(logits.device, logits.dtype)
    return hard_ce(logits, b.labels, w) if labelled.all() else hard_ce(logits[labelled], b.labels[labelled], w)


def kd_term(b: Batch):
    """T^2 KL from the teacher's logits to the student's, every row."""
    return soft_kl(b.out["logits"], b.teacher_logits, b.temperature)


def hidden_term(b: Batch):
    """Hidden-state MSE over the layer map (through the student's `distill_projection` if widths differ)."""
    proj = getattr(b.model, "distill_projection", None)
    total = None
    for i, j in enumerate(b.layer_map):
        h = b.out.hidden_states[i + 1]
        h = proj(h) if proj is not None else h
        term = hidden_mse(h, b.teacher_out.hidden_states[j], b.mask) / len(b.layer_map)
        total = term if total is None else total + term
    return total


def attention_term(b: Batch):
    """Attention-distribution KL over the layer map (MiniLM / TinyBERT)."""
    total = None
    for i, j in enumerate(b.layer_map):
        term = attention_kl(b.out.attentions[i], b.teacher_out.attentions[j - 1], b.mask) / len(b.layer_map)
        total = term if total is None else total + term
    return total


def l1_term(b: Batch):
    """Mean |w| over the given matrices (sparse training), while training only."""
    if not b.model.training or not b.l1_weights:
        return None
    return sum(w.abs().sum() for w in b.l1_weights) / sum(w.numel() for w in b.l1_weights)


def task_ce_term(b: Batch):
    """Multi-task: each row's CE under its own task's head, summed over tasks, over the batch size."""
    per_task = b.out.get("task_logits")
    if per_task is None:  # no task ids (validation): every row is the primary task
        return ce_term(b)
    loss = b.out["logits"].new_zeros(())
    for rows, logits in per_task:
        if rows.any():
            loss = loss + F.cross_entropy(logits, b.labels[rows], reduction="sum")
    return loss / len(b.labels)


LOSSES: dict[str, Callable[[Batch], torch.Tensor | None]] = {
    "ce": ce_term, "kd": kd_term, "hidden": hidden_term, "attention": attention_term, "l1": l1_term, "task_ce": task_ce_term,
}
NEEDS_TEACHER_OUTPUTS = {"hidden": "output_hidden_states", "attention": "output_attentions"}


def objective(weights: dict[str, float] | None = None, without_teacher: dict[str, float] | None = None,
              temperature: float = 1.0, teacher=None, layer_map: list[int] | None = None, l1_weights: list | None = None,
              class_weights: list[float] | None = None):
    """The loss the Trainer minimises: sum of weight * LOSSES[name] over `weights` for rows with
    teacher logits, over `without_teacher` (default {"ce": 1}) for rows without. `teacher` is run
    (no grad) only when a hidden or attention term is weighted. `class_weights` (one per label,
    `config.class_weights`) weigh the CE term's rows by their label."""
    weights = {k: v for k, v in (weights or {}).items() if v > 0}
    without = {k: v for k, v in (without_teacher or {"ce": 1.0}).items() if v > 0}
    unknown = sorted((set(weights) | set(without)) - set(LOSSES))
    if unknown:
        raise ValueError(f"unknown loss {unknown[0]!r}; known: {', '.join(LOSSES)}")
    cw = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None

    def loss_fn(model, inputs):
        inputs = dict(inputs)
        t_logits = inputs.pop("teacher_logits", None)
        labels = inputs.pop("labels")
        terms = weights if t_logits is not None else without
        flags = {flag: True for name, flag in NEEDS_TEACHER_OUTPUTS.items() if name in terms}
        out = model(**inputs, **flags)
        teacher_out = None
        if flags:
            with torch.no_grad():
                teacher_out = teacher(**{k: v for k, v in inputs.items() if k != "task_ids"}, **flags)
        b = Batch(model, out, labels, inputs.get("attention_mask"), t_logits, teacher_out, layer_map, temperature,
                  l1_weights, inputs.get("task_ids"), cw)
        loss = None
        for name, w in terms.items():
            value = LOSSES[name](b)
            if value is not None:
                value = value if w == 1.0 else w * value
                loss = value if loss is None else loss + value
        if loss is None:
            loss = out["logits"].new_zeros(())
        if isinstance(out, dict) and "task_logits" in out:  # the Trainer's evaluation wants logits only
            out = {"logits": out["logits"]}
        return loss, out

    return loss_fn


def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Student layer i learns from teacher layer map[i] (1-based hidden-state index, 0 = embeddings).

    Uniform: the student's last layer maps to the teacher's last; e.g. 3 of 6 -> [2, 4, 6].
    """
    if n_student < 1 or n_teacher < n_student:
        raise ValueError(f"cannot map {n_student} student layers onto {n_teacher} teacher layers")
    return [round((i + 1) * n_teacher / n_student) for i in range(n_student)]
