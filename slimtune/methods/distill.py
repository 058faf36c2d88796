"""Knowledge distillation: a smaller student learns from the teacher (the incoming model).

Loss (see distill_losses): alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher || student)
+ hidden_weight * hidden-state MSE + attention_weight * attention KL, over a layer map.

Students: a packaged model or folder (e.g. `minilm-l3`), `truncate` (the teacher's own layers,
DistilBERT-style), or `shrink` (a smaller config, initialised from the teacher's weights or
randomly). Teacher logits are computed once and cached in the run folder; when only logits are
needed the teacher's weights are released before the student trains.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..data import TextSet, read_table
from ..errors import SlimtuneError
from ..train import TrainConfig, EncodedDataset, count_trainable, train
from . import StageContext, register
from .distill_losses import attention_kl, combined, hard_ce, hidden_mse, uniform_layer_map
from .finetune import encoder_layers

IGNORE = -100  # label of unlabelled (teacher-only) examples


@dataclass
class DistillConfig(TrainConfig):
    learning_rate: float = 1e-4
    student: str = "minilm-l3"  # packaged name or HF folder, or `truncate` / `shrink`
    layers: list[int] | None = None  # truncate: teacher layers to keep (0-based); default every other
    num_layers: int | None = None  # shrink: smaller config fields (unset: the teacher's)
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    init: str = "teacher"  # shrink: teacher (copy/slice the teacher's weights) | random
    teacher: str | None = None  # default: the model coming out of the previous stage
    alpha: float = 0.5  # weight of the hard-label CE; 1 - alpha on the soft KL
    temperature: float = 2.0
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    layer_map: list[int] | None = None  # student layer i learns from teacher layer map[i] (1-based)
    extra_texts: str | None = None  # unlabelled texts file, or `rotten_tomatoes_plot`
    extra_text_column: str = "text"
    max_extra_texts: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.alpha <= 1 or self.temperature <= 0:
            raise SlimtuneError("distill: alpha must be in [0, 1] and temperature > 0")
        if self.init not in ("teacher", "random"):
            raise SlimtuneError(f"distill: init {self.init!r} is not one of teacher, random")


# ---- students -------------------------------------------------------------------------------


def _layers_name(model) -> str:
    """Dotted name of the encoder's layer list, e.g. `bert.encoder.layer`."""
    layers = encoder_layers(model)
    return next(n for n, m in model.named_modules() if m is layers)


def truncate(teacher, layers: list[int]):
    """A copy of the teacher that keeps only `layers` (0-based), weights untouched."""
    n = len(encoder_layers(teacher))
    if not layers or any(not 0 <= i < n for i in layers) or sorted(set(layers)) != list(layers):
        raise SlimtuneError(f"distill: layers {layers} must be increasing indices in 0..{n - 1}")
    student = copy.deepcopy(teacher)
    parent_name, _, attr = _layers_name(student).rpartition(".")
    parent = student.get_submodule(parent_name)
    kept = getattr(parent, attr)
    setattr(parent, attr, nn.ModuleList([kept[i] for i in layers]))
    student.config.num_hidden_layers = len(layers)
    return student


def shrink(teacher, cfg: DistillConfig):
    """A smaller config; init `teacher` copies each tensor from its mapped teacher layer, sliced."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(teacher.config)
    for key, value in (("num_hidden_layers", cfg.num_layers), ("hidden_size", cfg.hidden_size),
                       ("intermediate_size", cfg.intermediate_size), ("num_attention_heads", cfg.num_attention_heads)):
        if value is not None:
            setattr(config, key, value)
    if config.hidden_size % config.num_attention_heads:
        raise SlimtuneError(f"distill: hidden_size {config.hidden_size} is not a multiple of num_attention_heads {config.num_attention_heads}")
    student = AutoModelForSequenceClassification.from_config(config)
    if cfg.init == "teacher":
        t_state = teacher.state_dict()
        prefix = _layers_name(teacher) + "."
        lmap = uniform_layer_map(config.num_hidden_layers, teacher.config.num_hidden_layers)
        with torch.no_grad():
            for name, p in student.state_dict().items():
                src = name
                if name.startswith(prefix):
                    i, rest = name[len(prefix):].split(".", 1)
                    src = f"{prefix}{lmap[int(i)] - 1}.{rest}"
                t = t_state[src]
                p.copy_(t[tuple(slice(0, d) for d in p.shape)])
    return student


def build_student(teacher, tokenizer, cfg: DistillConfig, label_names: list[str]):
    if cfg.student == "truncate":
        n = len(encoder_layers(teacher))
        return truncate(teacher, cfg.layers if cfg.layers is not None else list(range(0, n, 2))), tokenizer
    if cfg.student == "shrink":
        return shrink(teacher, cfg), tokenizer
    from ..models import load_model

    return load_model(cfg.student, label_names)


# ---- cached teacher outputs -----------------------------------------------------------------


def _digest(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def teacher_logits(teacher, tokenizer, texts: list[str], max_length: int, cache_dir: Path, log) -> tuple[torch.Tensor, bool]:
    """Teacher logits for `texts`, read from / written to `cache_dir` (safetensors, atomic).

    Under several processes rank 0 computes and caches them first; the others then read the cache.
    """
    from .. import distributed

    with distributed.main_first():
        return _teacher_logits(teacher, tokenizer, texts, max_length, cache_dir, log)


def _teacher_logits(teacher, tokenizer, texts: list[str], max_length: int, cache_dir: Path, log) -> tuple[torch.Tensor, bool]:
    from safetensors.torch import load_file, save_file

    from ..predictors import TorchPredictor, batched_logits

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


def extra_texts(cfg: DistillConfig, exclude: set[str]) -> list[str]:
    if cfg.extra_texts is None:
        return []
    if cfg.extra_texts == "rotten_tomatoes_plot":
        import pandas as pd

        from .. import assets

        df = pd.read_csv(assets.locate(assets.ROTTEN_TOMATOES))
        texts = df.loc[df["category"] == "plot", "text"].fillna("").astype(str).tolist()
    else:
        texts = read_table(cfg.extra_texts, cfg.extra_text_column, None)["text"].fillna("").astype(str).tolist()
    seen, out = set(exclude), []  # never distil on held-out texts; no duplicates
    for t in (t.strip() for t in texts):
        if t and t not in seen:
            seen.add(t)
            out.append(t)
    return out[: cfg.max_extra_texts] if cfg.max_extra_texts else out


# ---- training -------------------------------------------------------------------------------


class _Collator:
    """Dynamic padding for the token fields; teacher logits stacked as they are."""

    def __init__(self, tokenizer):
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer)

    def __call__(self, rows):
        batch = self.pad([{k: v for k, v in r.items() if k != "teacher_logits"} for r in rows])
        if "teacher_logits" in rows[0]:
            batch["teacher_logits"] = torch.stack([r["teacher_logits"] for r in rows])
        return batch


def _distill_trainer(cfg: DistillConfig, teacher, layer_map: list[int] | None):
    from transformers import Trainer

    class DistillTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            inputs = dict(inputs)
            t_logits = inputs.pop("teacher_logits", None)
            labels = inputs.pop("labels")
            if t_logits is None:  # validation rows: plain CE on the true labels
                out = model(**inputs)
                loss = hard_ce(out.logits, labels)
                return (loss, out) if return_outputs else loss
            need_h, need_a = cfg.hidden_weight > 0, cfg.attention_weight > 0
            out = model(**inputs, output_hidden_states=need_h, output_attentions=need_a)
            loss = combined(cfg.alpha, cfg.temperature, out.logits, t_logits, labels, IGNORE)
            if need_h or need_a:
                with torch.no_grad():
                    t_out = teacher(**inputs, output_hidden_states=need_h, output_attentions=need_a)
                mask = inputs["attention_mask"]
                proj = getattr(model, "distill_projection", None)
                for i, j in enumerate(layer_map):
                    if need_h:
                        h = out.hidden_states[i + 1]
                        h = proj(h) if proj is not None else h
                        loss = loss + cfg.hidden_weight * hidden_mse(h, t_out.hidden_states[j], mask) / len(layer_map)
                    if need_a:
                        loss = loss + cfg.attention_weight * attention_kl(out.attentions[i], t_out.attentions[j - 1], mask) / len(layer_map)
            return (loss, out) if return_outputs else loss

    return DistillTrainer


@register("distill", DistillConfig)
def distill(model, tokenizer, cfg: DistillConfig, ctx: StageContext):
    """Distil the incoming model (teacher) into a smaller student."""
    splits = ctx.splits
    teacher, t_tok = model, tokenizer
    if cfg.teacher is not None:
        from ..models import load_model

        teacher, t_tok = load_model(cfg.teacher, splits.label_names)
    if teacher.config.num_labels != len(splits.label_names):
        raise SlimtuneError(f"distill: teacher has {teacher.config.num_labels} labels, the data {len(splits.label_names)}")
    student, s_tok = build_student(teacher, t_tok, cfg, splits.label_names)
    online = cfg.hidden_weight > 0 or cfg.attention_weight > 0
    layer_map = None
    if online:
        if s_tok.get_vocab() != t_tok.get_vocab():
            raise SlimtuneError("distill: hidden/attention matching needs the teacher's tokenizer; this student's vocabulary differs (use logits only: hidden_weight: 0, attention_weight: 0)")
        n_s, n_t = len(encoder_layers(student)), len(encoder_layers(teacher))
        layer_map = cfg.layer_map or uniform_layer_map(n_s, n_t)
        if len(layer_map) != n_s or any(not 1 <= j <= n_t for j in layer_map):
            raise SlimtuneError(f"distill: layer_map {layer_map} needs {n_s} entries in 1..{n_t}")
        if student.config.hidden_size != teacher.config.hidden_size and cfg.hidden_weight > 0:
            student.distill_projection = nn.Linear(student.config.hidden_size, teacher.config.hidden_size)
        if cfg.attention_weight > 0:  # attention probabilities are only returned by eager attention
            previous_attn = student.config._attn_implementation
            student.set_attn_implementation("eager")
            teacher.set_attn_implementation("eager")
        teacher.eval().requires_grad_(False)

    extra = extra_texts(cfg, set(splits.test.texts) | set(splits.val.texts) | set(splits.train.texts))
    texts = splits.train.texts + extra
    logits, reused = teacher_logits(teacher, t_tok, texts, cfg.max_length, ctx.cache_dir or ctx.work_dir, ctx.log)
    teacher_params = sum(p.numel() for p in teacher.parameters())
    if not online and teacher is model:
        teacher.to("meta")  # release the teacher's weights (the caller's reference included)

    data = EncodedDataset(s_tok, TextSet(texts, splits.train.labels + [IGNORE] * len(extra)), cfg.max_length, cfg.truncation)
    for row, t in zip(data.rows, logits):
        row["teacher_logits"] = t
    student.requires_grad_(True)
    trainable, total = count_trainable(student)
    ctx.log(f"distilling into {total:,} parameters ({len(texts)} texts, {len(extra)} unlabelled)")
    info = train(student, s_tok, splits, cfg, ctx.work_dir / "trainer", callbacks=ctx.callbacks,
                 trainer_cls=_distill_trainer(cfg, teacher, layer_map), train_set=data,
                 collator=_Collator(s_tok), checkpoint_dir=ctx.checkpoint_dir)
    if hasattr(student, "distill_projection"):
        del student.distill_projection
    if cfg.attention_weight > 0:
        student.set_attn_implementation(previous_attn)
    info |= {"trainable_params": trainable, "total_params": total, "teacher_params": teacher_params,
             "teacher_logits_reused": reused, "extra_texts": len(extra), "layer_map": layer_map}
    return student, s_tok, info
