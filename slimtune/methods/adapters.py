"""Parameter-efficient methods through PEFT: LoRA, IA3 (merged into the weights after training),
prompt tuning, prefix tuning and P-tuning (kept as adapters: virtual tokens cannot be merged).
Bottleneck adapters (Houlsby / Pfeiffer) are not in PEFT: `adapter` builds them into a SlimBERT
(model/slim_bert.py), which saves and loads as an ordinary model folder.

The classification head (classifier + pooler) always trains and is saved, through PEFT's
`modules_to_save`: PEFT's SEQ_CLS default covers only `classifier`/`score`, and an untrained
random pooler caps accuracy. Every stage folder also holds the PEFT adapter in `adapter/`, loadable
with `PeftModel.from_pretrained(base, folder / "adapter")`:

- merged methods (LoRA, IA3): the folder's weights are the merged model (an ordinary HF folder);
  `adapter/` applies to the stage's *source* model (its `base_model_name_or_path`);
- prompt / prefix / P-tuning: the folder's weights are the base model as it went in, and
  `adapter/` is applied on load (slimtune does this itself; `adapter/slimtune.json` says which).

LoRA on a pruned (sparse) model keeps its zeros: merging adds a dense B@A to each target matrix,
so weights that were exactly zero before are set back to zero after the merge.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ..errors import SlimtuneError, check_ranges
from ..model.structure import ADAPTER_KINDS
from ..model.structure import check_bert, freeze_all_but, head_modules, head_names
from ..stage import Artifact, StageContext, StageResult, register
from ..train.config import TrainConfig
from ..train.loop import train

@dataclass
class LoraConfig(TrainConfig):
    learning_rate: float = 5e-4
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.r < 1:
            raise SlimtuneError("lora: r must be >= 1")
        check_ranges("lora", self, alpha="> 0", dropout="in [0, 1)")


@dataclass
class IA3Config(TrainConfig):
    learning_rate: float = 3e-3
    target_modules: list[str] = field(default_factory=lambda: ["key", "value", "output.dense"])
    feedforward_modules: list[str] = field(default_factory=lambda: ["output.dense"])  # scaled on the input side


@dataclass
class PromptConfig(TrainConfig):
    learning_rate: float = 3e-2
    virtual_tokens: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.virtual_tokens < 1:
            raise SlimtuneError("virtual_tokens must be >= 1")


@dataclass
class PrefixConfig(PromptConfig):
    learning_rate: float = 1e-2
    projection: bool = False  # True: reparameterise the prefix through an MLP (P-tuning v2 style)
    encoder_hidden_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges("prefix", self, encoder_hidden_size=">= 1")


@dataclass
class PTuningConfig(PromptConfig):
    learning_rate: float = 1e-2
    encoder_hidden_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges("ptuning", self, encoder_hidden_size=">= 1")


def _check_targets(model, targets: list[str], method: str) -> None:
    names = [n for n, _ in model.named_modules()]
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in names):
            raise SlimtuneError(f"{method}: target module {t!r} not in the model (e.g. query, key, value, dense, output.dense)")


def _head_to_save(model, linear_leaves: bool = False) -> list[str]:
    """modules_to_save names for the head. IA3's unload (peft 0.21) can only put back Linear
    modules (it fails on BertPooler), so for it the head is named by its Linear leaves."""
    import torch

    if not linear_leaves:
        return [n.split(".")[-1] for n in head_names(model)]
    return [".".join(f"{h}.{n}".split(".")[-2:]) if n else h.split(".")[-1]
            for h in head_names(model) for n, m in model.get_submodule(h).named_modules() if isinstance(m, torch.nn.Linear)]


def _peft_stage(model, tokenizer, pcfg, cfg: TrainConfig, ctx: StageContext, merge: bool):
    import peft
    import torch

    from ..artifacts.peft_adapter import ADAPTER_DIR, write_adapter

    base = None if merge else copy.deepcopy(model)  # the folder stores the base as it went in
    source = model.config.name_or_path
    pmodel = peft.get_peft_model(model, pcfg)
    info = train(pmodel, tokenizer, cfg, ctx)
    adapter = write_adapter(pmodel, ctx.work_dir / ADAPTER_DIR, merge, source)
    if merge:
        from peft.tuners.tuners_utils import BaseTunerLayer

        targets = [n for n, m in pmodel.named_modules()
                   if isinstance(m, BaseTunerLayer) and isinstance(m.get_base_layer(), torch.nn.Linear)]
        zeros = {n: pmodel.get_submodule(n).get_base_layer().weight == 0 for n in targets}
        out = pmodel.merge_and_unload()
        sparse = {n: z for n, z in zeros.items() if z.any()}
        if sparse:  # keep a pruned model's zeros (merging adds a dense update)
            with torch.no_grad():
                for n, z in sparse.items():
                    out.get_submodule(n.removeprefix("base_model.model.")).weight.masked_fill_(z, 0.0)
            info["kept_zeros"] = int(sum(int(z.sum()) for z in sparse.values()))
        out.requires_grad_(True)
    else:
        out = pmodel
    info |= {"peft_method": str(pcfg.peft_type.value if hasattr(pcfg.peft_type, "value") else pcfg.peft_type).lower(), "merged": merge}

    return StageResult(out, tokenizer, info, Artifact("peft_adapter", {"adapter": adapter, "base": base}))


@register("lora", LoraConfig)
def lora(model, tokenizer, cfg: LoraConfig, ctx: StageContext):
    """LoRA adapters (PEFT) on the chosen projections plus a trained head; merged after training."""
    import peft

    _check_targets(model, cfg.target_modules, "lora")
    pcfg = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                           target_modules=list(cfg.target_modules), modules_to_save=_head_to_save(model))
    return _peft_stage(model, tokenizer, pcfg, cfg, ctx, merge=True)


@register("ia3", IA3Config)
def ia3(model, tokenizer, cfg: IA3Config, ctx: StageContext):
    """IA3 (PEFT): learned scaling vectors on keys, values and FFN inputs; merged after training."""
    import peft

    _check_targets(model, cfg.target_modules, "ia3")
    if not set(cfg.feedforward_modules) <= set(cfg.target_modules):
        raise SlimtuneError("ia3: feedforward_modules must be a subset of target_modules")
    pcfg = peft.IA3Config(task_type=peft.TaskType.SEQ_CLS, target_modules=list(cfg.target_modules),
                          feedforward_modules=list(cfg.feedforward_modules), modules_to_save=_head_to_save(model, linear_leaves=True))
    return _peft_stage(model, tokenizer, pcfg, cfg, ctx, merge=True)


@register("prompt", PromptConfig)
def prompt(model, tokenizer, cfg: PromptConfig, ctx: StageContext):
    """Prompt tuning (PEFT): trained virtual-token embeddings before the input; kept as an adapter."""
    import peft

    pcfg = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_CLS, num_virtual_tokens=cfg.virtual_tokens,
                                   modules_to_save=_head_to_save(model))
    return _peft_stage(model, tokenizer, pcfg, cfg, ctx, merge=False)


@register("prefix", PrefixConfig)
def prefix(model, tokenizer, cfg: PrefixConfig, ctx: StageContext):
    """Prefix tuning (PEFT): trained keys/values prepended in every layer; kept as an adapter."""
    import peft

    from ..model.compat import expose_past_key_values

    if model.config.model_type == "slimtune_bert":
        raise SlimtuneError("prefix: a pruned/shared/adapter model (SlimBERT) has no key/value cache to prepend to; "
                            "use lora, ia3 or bitfit on it, or run prefix before slimming")
    expose_past_key_values(model)
    pcfg = peft.PrefixTuningConfig(task_type=peft.TaskType.SEQ_CLS, num_virtual_tokens=cfg.virtual_tokens,
                                   prefix_projection=cfg.projection, encoder_hidden_size=cfg.encoder_hidden_size,
                                   modules_to_save=_head_to_save(model))
    return _peft_stage(model, tokenizer, pcfg, cfg, ctx, merge=False)


@register("ptuning", PTuningConfig)
def ptuning(model, tokenizer, cfg: PTuningConfig, ctx: StageContext):
    """P-tuning (PEFT): virtual tokens produced by a small trained MLP encoder; kept as an adapter."""
    import peft

    pcfg = peft.PromptEncoderConfig(task_type=peft.TaskType.SEQ_CLS, num_virtual_tokens=cfg.virtual_tokens,
                                    encoder_hidden_size=cfg.encoder_hidden_size, modules_to_save=_head_to_save(model))
    return _peft_stage(model, tokenizer, pcfg, cfg, ctx, merge=False)



@dataclass
class BottleneckConfig(TrainConfig):
    learning_rate: float = 1e-3
    kind: str = "pfeiffer"  # pfeiffer: after each FFN | houlsby: after attention and after FFN
    size: int = 64  # bottleneck width
    train_layernorm: bool = True  # Houlsby et al. train the LayerNorms with the adapters

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in ADAPTER_KINDS or self.size < 1:
            raise SlimtuneError(f"adapter: kind must be one of {', '.join(ADAPTER_KINDS)} and size >= 1")


@register("adapter", BottleneckConfig)
def adapter(model, tokenizer, cfg: BottleneckConfig, ctx: StageContext):
    """Bottleneck adapters (Houlsby/Pfeiffer) in every layer; only adapters, LayerNorms and head train."""
    import torch

    from ..model.slim_bert import Adapter, SlimBertForSequenceClassification, slim_config

    check_bert(model, "adapters")
    if getattr(model.config, "adapter", None):
        raise SlimtuneError("adapter: this model already has adapters")
    new = SlimBertForSequenceClassification(slim_config(model.config, adapter=cfg.kind, adapter_size=cfg.size))
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(".adapter." in k for k in missing), (missing, unexpected)
    new.config._attn_implementation = model.config._attn_implementation
    trainable = [m for m in new.modules() if isinstance(m, Adapter)] + head_modules(new)
    if cfg.train_layernorm:
        trainable += [m for m in new.modules() if isinstance(m, torch.nn.LayerNorm)]
    freeze_all_but(new, trainable)
    return StageResult(new, tokenizer, train(new, tokenizer, cfg, ctx))
