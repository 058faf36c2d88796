"""Knowledge distillation: a smaller student learns from the teacher (the incoming model).

Loss (train/losses.py, by name): alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher || student)
+ hidden_weight * hidden-state MSE + attention_weight * attention KL, over a layer map.

Students: a packaged model or folder (e.g. `minilm-l3`), `truncate` (the teacher's own layers,
DistilBERT-style), or `shrink` (a smaller config, initialised from the teacher's weights or
randomly). Teacher logits are computed once and cached in the run folder; when only logits are
needed the teacher's weights are released before the student trains.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from ..data import TextSet, read_table
from ..errors import SlimtuneError, check_ranges, one_of
from ..model.structure import encoder_layers, layers_name
from ..stage import StageContext, StageResult, register
from ..train.config import TrainConfig


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
        one_of("init", self.init, ("teacher", "random"), "distill")
        check_ranges("distill", self, layers=">= 0", num_layers=">= 1", hidden_size=">= 1", intermediate_size=">= 1",
                     num_attention_heads=">= 1", hidden_weight=">= 0", attention_weight=">= 0", layer_map=">= 1",
                     max_extra_texts=">= 1")


# ---- students -------------------------------------------------------------------------------


def truncate(teacher, layers: list[int]):
    """A copy of the teacher that keeps only `layers` (0-based), weights untouched."""
    import torch.nn as nn

    n = len(encoder_layers(teacher))
    if not layers or any(not 0 <= i < n for i in layers) or sorted(set(layers)) != list(layers):
        raise SlimtuneError(f"distill: layers {layers} must be increasing indices in 0..{n - 1}")
    student = copy.deepcopy(teacher)
    parent_name, _, attr = layers_name(student).rpartition(".")
    parent = student.get_submodule(parent_name)
    kept = getattr(parent, attr)
    setattr(parent, attr, nn.ModuleList([kept[i] for i in layers]))
    student.config.num_hidden_layers = len(layers)
    return student


def shrink(teacher, cfg: DistillConfig):
    """A smaller config; init `teacher` copies each tensor from its mapped teacher layer, sliced."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from ..model.folders import from_config
    from ..train.losses import uniform_layer_map

    config = copy.deepcopy(teacher.config)
    for key, value in (("num_hidden_layers", cfg.num_layers), ("hidden_size", cfg.hidden_size),
                       ("intermediate_size", cfg.intermediate_size), ("num_attention_heads", cfg.num_attention_heads)):
        if value is not None:
            setattr(config, key, value)
    if config.hidden_size % config.num_attention_heads:
        raise SlimtuneError(f"distill: hidden_size {config.hidden_size} is not a multiple of num_attention_heads {config.num_attention_heads}")
    student = from_config(AutoModelForSequenceClassification, config)
    if cfg.init == "teacher":
        t_state = teacher.state_dict()
        prefix = layers_name(teacher) + "."
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
    from ..artifacts import load_model

    return load_model(cfg.student, label_names)


def extra_texts(cfg: DistillConfig, exclude: set[str]) -> list[str]:
    if cfg.extra_texts is None:
        return []
    if cfg.extra_texts == "rotten_tomatoes_plot":
        import pandas as pd

        from ..model import assets

        df = pd.read_csv(assets.locate(assets.ROTTEN_TOMATOES))
        texts = df.loc[df["category"] == "plot", "text"].fillna("").astype(str).tolist()
    else:
        texts = read_table(cfg.extra_texts, cfg.extra_text_column, None, hint="set the distill stage's extra_text_column")
        texts = texts["text"].fillna("").astype(str).tolist()
    seen, out = set(exclude), []  # never distil on held-out texts; no duplicates
    for t in (t.strip() for t in texts):
        if t and t not in seen:
            seen.add(t)
            out.append(t)
    return out[: cfg.max_extra_texts] if cfg.max_extra_texts else out


@register("distill", DistillConfig)
def distill(model, tokenizer, cfg: DistillConfig, ctx: StageContext):
    """Distil the incoming model (teacher) into a smaller student."""
    import torch.nn as nn

    from ..train.loop import EncodedDataset, class_weights_for, train
    from ..train.losses import IGNORE, objective, uniform_layer_map
    from ..train.teacher import attach, teacher_logits

    splits = ctx.splits
    teacher, t_tok = model, tokenizer
    if cfg.teacher is not None:
        from ..artifacts import load_model

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
    logits, reused = teacher_logits(teacher, t_tok, texts, cfg.max_length, ctx.cache_dir or ctx.work_dir, ctx.log,
                                    passes=ctx.passes)
    teacher_params = sum(p.numel() for p in teacher.parameters())
    if not online and teacher is model:
        teacher.to("meta")  # release the teacher's weights (the caller's reference included)

    data = attach(EncodedDataset(s_tok, TextSet(texts, splits.train.labels + [IGNORE] * len(extra)), cfg.max_length, cfg.truncation), logits)
    student.requires_grad_(True)
    ctx.log(f"distilling into {sum(p.numel() for p in student.parameters()):,} parameters ({len(texts)} texts, {len(extra)} unlabelled)")
    loss = objective({"ce": cfg.alpha, "kd": 1 - cfg.alpha, "hidden": cfg.hidden_weight, "attention": cfg.attention_weight},
                     temperature=cfg.temperature, teacher=teacher, layer_map=layer_map,
                     class_weights=class_weights_for(cfg, ctx))
    info = train(student, s_tok, cfg, ctx, loss=loss, train_set=data, extra_columns=("teacher_logits",))
    if hasattr(student, "distill_projection"):
        del student.distill_projection
    if cfg.attention_weight > 0:
        student.set_attn_implementation(previous_attn)
    info |= {"teacher_params": teacher_params, "teacher_logits_reused": reused, "extra_texts": len(extra), "layer_map": layer_map}
    return StageResult(student, s_tok, info)
