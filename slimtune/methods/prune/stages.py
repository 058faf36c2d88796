"""Pruning stages: `prune` (unstructured, stored sparse) and `prune_structured` (heads, FFN neurons
and layers physically removed), each with recovery training through the one training path.

Unstructured pruning happens inside that training as a Trainer callback: one-shot (prune, then
recover with the mask held), or gradual on a cubic schedule (Zhu & Gupta), by magnitude or by
movement scores (Sanh et al. 2020), optionally with an L1 penalty on the pruned matrices. The
result is saved with the `sparse` codec (bitmask + non-zeros), so the size gain is real on disk;
latency is "size-only" unless one is measured. Structured pruning repeats score -> remove ->
recover for `rounds` rounds (cubic schedule of the removed fraction). Recovery may distil from
the unpruned model (`alpha` < 1; its logits are computed once and cached).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...data import TextSet
from ...errors import SlimtuneError, check_ranges, one_of
from ...model.structure import check_bert, counts, num_params
from ...stage import Artifact, StageContext, StageResult, register
from ...train.config import RecoveryConfig, TrainConfig


@dataclass
class PruneConfig(RecoveryConfig):
    sparsity: float = 0.8  # fraction of the prunable weights set to zero (exact)
    scope: str = "global"  # global: one ranking over all matrices | layer: each matrix the same sparsity
    score: str = "magnitude"  # magnitude (|w|) | movement (-sum over steps of w * grad)
    schedule: str = "cubic"  # oneshot: prune, then recover | cubic: prune gradually while training
    rounds: int = 10  # cubic: how many pruning steps
    prune_fraction: float = 0.7  # cubic: pruning ends after this fraction of the training steps
    include_embeddings: bool = True  # prune the word embeddings too (half of MiniLM's weights)
    unused_tokens_first: bool = True  # embedding rows of tokens absent from the training texts go first
    l1: float = 0.0  # > 0: add l1 * mean |w| over the prunable matrices to the loss (sparse training)
    storage: str = "sparse"  # sparse (bitmask + non-zeros on disk) | dense (save_pretrained)

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of("scope", self.scope, ("global", "layer"))
        one_of("score", self.score, ("magnitude", "movement"))
        one_of("schedule", self.schedule, ("oneshot", "cubic"))
        one_of("storage", self.storage, ("sparse", "dense"))
        if not 0 < self.sparsity < 1:
            raise SlimtuneError(f"prune: sparsity must be in (0, 1), got {self.sparsity}")
        if self.score == "movement" and (self.schedule != "cubic" or not self.recover):
            raise SlimtuneError("prune: movement scores come from training; use schedule: cubic with recover: true")
        if self.schedule == "cubic" and not self.recover:
            raise SlimtuneError("prune: schedule cubic prunes during training; use schedule: oneshot with recover: false")
        if self.l1 < 0 or self.rounds < 1 or not 0 < self.prune_fraction <= 1:
            raise SlimtuneError("prune: l1 >= 0, rounds >= 1 and prune_fraction in (0, 1] are required")


@dataclass
class StructuredConfig(RecoveryConfig):
    heads: float = 0.0  # fraction of all attention heads to remove
    ffn: float = 0.5  # fraction of all FFN neurons to remove
    layers: int = 0  # whole layers to drop, the least important by `score`
    drop_layers: list[int] | None = None  # or name them (0-based)
    score: str = "taylor"  # taylor (first-order, on calibration batches) | magnitude
    scope: str = "global"  # global: rank across layers | layer: every layer loses the same share
    calibration_batches: int = 16  # taylor: training batches used for the scores
    rounds: int = 1  # > 1: iterative prune -> recover, the removed fraction on a cubic schedule

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of("score", self.score, ("taylor", "magnitude"))
        one_of("scope", self.scope, ("global", "layer"))
        if not (0 <= self.heads < 1 and 0 <= self.ffn < 1):
            raise SlimtuneError("prune_structured: heads and ffn are fractions in [0, 1)")
        if self.layers < 0 or self.rounds < 1 or self.calibration_batches < 1:
            raise SlimtuneError("prune_structured: layers >= 0, rounds >= 1, calibration_batches >= 1 are required")
        check_ranges("prune_structured", self, drop_layers=">= 0")
        if self.layers and self.drop_layers:
            raise SlimtuneError("prune_structured: give layers (a count) or drop_layers (a list), not both")


# ---- training pieces --------------------------------------------------------------------------


class MaskCallback:
    """Holds unstructured masks through training; on a schedule, recomputes them at higher sparsity.

    A plain object with Trainer callback methods (`train` wraps it): importing it costs no torch."""

    def __init__(self, weights: dict, cfg: PruneConfig, masks: dict | None = None, first: dict | None = None):
        self.weights, self.cfg = weights, cfg
        self.masks = masks
        self.first = first or {}  # name -> bool mask of weights to prune before any other (e.g. unused tokens)
        self.schedule: dict[int, float] = {}
        import torch

        self.movement = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in weights.items()} if cfg.score == "movement" else None

    def on_train_begin(self, args, state, control, **kwargs):
        from . import scores as P

        if self.cfg.schedule == "cubic":
            self.schedule = P.cubic_schedule(self.cfg.sparsity, self.cfg.rounds, state.max_steps, self.cfg.prune_fraction)
        if self.masks is None and state.global_step > 0:
            # resumed from a checkpoint: the pruned weights are its zeros; hold them
            self.masks = {n: w.detach() != 0 for n, w in self.weights.items()}
        self._apply()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.movement is not None:  # movement: weights moving toward zero score low
            for n, w in self.weights.items():
                if w.grad is not None:
                    self.movement[n] -= (w.grad * w.detach()).float()

    def on_step_end(self, args, state, control, **kwargs):
        target = self.schedule.get(state.global_step)
        if target is not None:
            self.prune_to(target)
        self._apply()

    def prune_to(self, sparsity: float) -> None:
        from . import scores as P

        scores = self.movement if self.movement is not None else {n: w.detach().abs() for n, w in self.weights.items()}
        # weights already exactly zero (e.g. a padding row) cost nothing to prune; then `first`
        scores = {n: s.masked_fill(self.weights[n].detach() == 0, float("-inf")) for n, s in scores.items()}
        for n, f in self.first.items():
            scores[n] = scores[n].masked_fill(f, float("-inf"))
        if self.masks is not None:  # pruned weights stay pruned: masks only ever shrink
            scores = {n: s.masked_fill(~self.masks[n], float("-inf")) for n, s in scores.items()}
        self.masks = P.masks_for(scores, sparsity, self.cfg.scope)

    def _apply(self) -> None:
        from . import scores as P

        if self.masks is not None:
            P.apply_masks(self.weights, self.masks)


# ---- stages -----------------------------------------------------------------------------------


@register("prune", PruneConfig)
def prune(model, tokenizer, cfg: PruneConfig, ctx: StageContext):
    """Unstructured pruning to an exact sparsity (magnitude or movement), stored sparse on disk."""
    from ...train.loop import count_trainable, train
    from ...train.teacher import recovery_objective, recovery_set
    from . import scores as P

    weights = P.prunable_weights(model, cfg.include_embeddings)
    first = {}
    if cfg.include_embeddings and cfg.unused_tokens_first:
        name = next(n for n in weights if n.endswith("word_embeddings.weight"))
        unused = P.unused_token_rows(tokenizer, ctx.splits.train.texts, weights[name].shape[0], cfg.max_length)
        first[name] = unused.unsqueeze(1).expand_as(weights[name])
        ctx.log(f"{int(unused.sum()):,} of {unused.numel():,} vocabulary rows never occur in the training texts: pruned first")
    cb = MaskCallback(weights, cfg, first=first)
    info: dict = {}
    if cfg.schedule == "oneshot":
        cb.prune_to(cfg.sparsity)
        cb._apply()
    if cfg.recover:
        model.requires_grad_(True)
        data = recovery_set(model, tokenizer, cfg, ctx)
        trainable, _ = count_trainable(model)
        ctx.log(f"pruning {sum(w.numel() for w in weights.values()):,} weights to {cfg.sparsity:.0%} ({cfg.schedule}, {cfg.score}) while training {trainable:,}")
        info = train(model, tokenizer, cfg, ctx, loss=recovery_objective(cfg, ctx, cfg.l1, list(weights.values())), train_set=data,
                     extra_columns=("teacher_logits",), callbacks=[cb])
    report = P.sparsity_report(weights)
    ctx.log(f"sparsity {report['sparsity']:.4f} over {report['prunable_weights']:,} prunable weights")
    info |= report | {"pruning": "unstructured", "speedup_kind": "size-only"}
    artifact = Artifact("compact", {"codec": "sparse"}) if cfg.storage == "sparse" else Artifact()
    return StageResult(model, tokenizer, info, artifact)


def _calibration_batches(model, tokenizer, cfg: StructuredConfig, ctx: StageContext):
    import torch
    from transformers import DataCollatorWithPadding

    from ...train.loop import EncodedDataset

    train = ctx.splits.train
    bs = cfg.batch_size
    g = torch.Generator().manual_seed(cfg.seed)
    # the same seeded sample as before, but only the sampled texts are tokenized (not all of train, every round)
    picked = torch.randperm(len(train), generator=g).tolist()[: bs * cfg.calibration_batches]
    data = EncodedDataset(tokenizer, TextSet([train.texts[i] for i in picked], [train.labels[i] for i in picked]), cfg.max_length)
    collate = DataCollatorWithPadding(tokenizer)
    return [collate(data.rows[k : k + bs]) for k in range(0, len(data), bs)]


def _scores(model, tokenizer, cfg: StructuredConfig, ctx: StageContext):
    from . import scores as P

    if cfg.score == "magnitude":
        return P.group_scores(model, "magnitude")
    return P.taylor_scores(model, _calibration_batches(model, tokenizer, cfg, ctx))


@register("prune_structured", StructuredConfig)
def prune_structured(model, tokenizer, cfg: StructuredConfig, ctx: StageContext):
    """Remove attention heads, FFN neurons and layers physically (smaller dense matrices)."""
    from ...train.loop import train
    from ...train.teacher import recovery_objective, recovery_set
    from . import scores as P

    check_bert(model)
    before = counts(model)
    params_before = num_params(model)
    n_heads, n_ffn = sum(before["heads"]), sum(before["ffn"])
    drop_layers = list(cfg.drop_layers or [])
    if any(not 0 <= i < before["layers"] for i in drop_layers) or len(set(drop_layers)) >= before["layers"]:
        raise SlimtuneError(f"prune_structured: drop_layers {drop_layers} must name some (not all) of layers 0..{before['layers'] - 1}")
    if cfg.layers >= before["layers"]:
        raise SlimtuneError(f"prune_structured: layers={cfg.layers} but the model has {before['layers']}")
    data = recovery_set(model, tokenizer, cfg, ctx) if cfg.recover else None
    history = []
    fh, ff = P.cumulative_fractions(cfg.heads, cfg.rounds), P.cumulative_fractions(cfg.ffn, cfg.rounds)
    for r in range(cfg.rounds):
        head_s, ffn_s = _scores(model, tokenizer, cfg, ctx)
        keep_layers = None
        if r == 0 and (cfg.layers or drop_layers):
            if cfg.layers:
                ls = P.layer_scores(head_s, ffn_s)
                drop_layers = sorted(sorted(range(len(ls)), key=lambda i: ls[i])[: cfg.layers])
            keep_layers = [i for i in range(before["layers"]) if i not in drop_layers]
        # counts are relative to the original model; layers dropped this round take theirs along
        alive = keep_layers if keep_layers is not None else range(len(head_s))
        cur_h = sum(head_s[i].numel() for i in alive)
        cur_f = sum(ffn_s[i].numel() for i in alive)
        drop_h = max(0, cur_h - round((1 - fh[r]) * n_heads))
        drop_f = max(0, cur_f - round((1 - ff[r]) * n_ffn))
        sub_h = [head_s[i] for i in alive]
        sub_f = [ffn_s[i] for i in alive]
        kh_sub = P.choose(sub_h, min(drop_h, cur_h - len(sub_h)), cfg.scope)
        kf_sub = P.choose(sub_f, min(drop_f, cur_f - len(sub_f)), cfg.scope)
        keep_h = [list(range(s.numel())) for s in head_s]
        keep_f = [list(range(s.numel())) for s in ffn_s]
        for i, kh, kf in zip(alive, kh_sub, kf_sub):
            keep_h[i], keep_f[i] = kh, kf
        model = P.remove_structure(model, keep_h, keep_f, keep_layers)
        now = counts(model)
        ctx.log(f"round {r + 1}/{cfg.rounds}: {now['layers']} layers, heads {now['heads']}, FFN {now['ffn']}")
        step = {"round": r + 1, **now, "params": sum(p.numel() for p in model.parameters())}
        if cfg.recover:
            model.requires_grad_(True)
            rcfg = _round_config(cfg, cfg.rounds)
            out = train(model, tokenizer, rcfg, ctx, loss=recovery_objective(cfg, ctx), train_set=data,
                        extra_columns=("teacher_logits",), work_name=f"trainer-{r}", checkpoints=cfg.rounds == 1)
            step |= {k: out[k] for k in ("train_steps", "train_seconds", "val_accuracy")}
        history.append(step)
    params_after = num_params(model)
    info = {
        "pruning": "structured", "score": cfg.score, "rounds": history,
        "heads_before": n_heads, "ffn_before": n_ffn, "layers_before": before["layers"],
        **{f"{k}_after": v for k, v in counts(model).items()},
        "params_before": params_before, "params_removed": params_before - params_after,
    }
    if cfg.recover:  # the last round's counts: the final model's
        info |= {"trainable_params": out["trainable_params"], "total_params": out["total_params"],
                 "train_steps": sum(h["train_steps"] for h in history),
                 "train_seconds": sum(h["train_seconds"] for h in history),
                 "train_examples": len(data), "val_accuracy": [v for h in history for v in h["val_accuracy"]]}
    return StageResult(model, tokenizer, info)


def _round_config(cfg: StructuredConfig, rounds: int) -> TrainConfig:
    """Each round recovers for its share of the epochs / steps."""
    import dataclasses

    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)}
    if rounds > 1:
        fields["epochs"] = cfg.epochs / rounds
        fields["max_steps"] = -1 if cfg.max_steps <= 0 else max(1, cfg.max_steps // rounds)
        fields["checkpoint_steps"] = 0
    return TrainConfig(**fields)

