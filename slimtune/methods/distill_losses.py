"""Distillation losses as plain functions picked by name (TextBrewer style).

Every function takes student and teacher tensors and returns a scalar. The total loss is

    alpha * hard_ce + (1 - alpha) * soft_kl(T)  +  w_hidden * hidden_mse  +  w_attn * attention_kl

where soft_kl is scaled by T^2 so its gradient scale does not shrink as T grows (Hinton et al.).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch.  logits: (B, K)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


def hard_ce(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(student_logits, labels)


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


LOSSES = {"soft_kl": soft_kl, "hard_ce": hard_ce, "hidden_mse": hidden_mse, "attention_kl": attention_kl}


def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Student layer i learns from teacher layer map[i] (1-based hidden-state index, 0 = embeddings).

    Uniform: the student's last layer maps to the teacher's last; e.g. 3 of 6 -> [2, 4, 6].
    """
    if n_student < 1 or n_teacher < n_student:
        raise ValueError(f"cannot map {n_student} student layers onto {n_teacher} teacher layers")
    return [round((i + 1) * n_teacher / n_student) for i in range(n_student)]
