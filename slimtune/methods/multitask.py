"""Multi-task: one shared backbone, one head (pooler + classifier) per task, trained together.

The recipe's data is the primary task (the runner evaluates it like any stage); `tasks:` adds
more, each with its own data and labels. Rows of all tasks are mixed in every batch; each row's
loss comes from its own task's head (mean CE over the batch). Transformers has no multi-head
sequence classifier, so the training wrapper (`MultiHead`) is written here; it reuses the
model's own encoder, pooler and classifier modules, so the primary task's model is an ordinary
classifier afterwards.

Each row's loss is the `task_ce` term of train/losses.py. Saved as one artifact
(`artifacts/multitask.py`): the stage folder is the primary task's classifier (loads anywhere), and
`tasks/NAME/head.safetensors` + `tasks.json` hold the other heads. `load_model(folder,
task=NAME)` (CLI: `--task NAME`) swaps that head in, so predict / eval / export work per task.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ..data import DataConfig, Splits, load_splits
from ..errors import SlimtuneError
from ..stage import Artifact, StageContext, StageResult, register
from ..train.config import TrainConfig


@dataclass
class MultiTaskConfig(TrainConfig):
    primary: str = "main"  # name of the recipe's own data as a task
    tasks: dict[str, DataConfig] = field(default_factory=dict)  # name -> a data block (as the recipe's `data:`)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.tasks or not isinstance(self.tasks, dict):
            raise SlimtuneError("multitask: give at least one extra task under `tasks:` (name: {data block})")
        for name in self.tasks:
            if name == self.primary or not name.replace("_", "").replace("-", "").isalnum():
                raise SlimtuneError(f"multitask: task name {name!r} must be unique, letters/digits/_/-")

    @property
    def task_data(self) -> dict[str, DataConfig]:
        return self.tasks


def _check(model) -> None:
    if model.config.model_type not in ("bert", "slimtune_bert"):
        raise SlimtuneError(f"multitask supports BERT-family models; this one is {model.config.model_type!r}")


def multi_head(model, label_counts: list[int]):
    """The training wrapper: shared encoder; head i = (pooler_i, classifier_i); head 0 is the model's own.

    Its forward returns the primary head's logits for every row and, given `task_ids`, each
    task's (rows, logits); the loss is `task_ce` (train/losses.py)."""
    import torch
    import torch.nn as nn

    class MultiHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            heads = [nn.ModuleDict({"pooler": model.bert.pooler, "classifier": model.classifier})]
            for n in label_counts[1:]:
                clf = nn.Linear(model.config.hidden_size, n)
                model._init_weights(clf)
                heads.append(nn.ModuleDict({"pooler": copy.deepcopy(model.bert.pooler), "classifier": clf}))
            self.heads = nn.ModuleList(heads)
            self.dropout = model.dropout

        def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, task_ids=None, **kwargs):
            hidden = self.model.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
            given = task_ids is not None
            if not given:
                task_ids = torch.zeros(len(input_ids), dtype=torch.long)
            logits0, per_task = None, []
            for t, head in enumerate(self.heads):
                rows = task_ids == t
                if t > 0 and not rows.any():
                    continue
                lg = head["classifier"](self.dropout(head["pooler"](hidden if t == 0 else hidden[rows])))
                if t == 0:
                    logits0, lg = lg, lg[rows]
                per_task.append((rows, lg))
            return {"logits": logits0, **({"task_logits": per_task} if given else {})}

    return MultiHead()


@register("multitask", MultiTaskConfig)
def multitask(model, tokenizer, cfg: MultiTaskConfig, ctx: StageContext):
    """One backbone, a head per task; trained on all tasks' data mixed."""
    from ..artifacts.multitask import with_head
    from ..measure.metrics import evaluate
    from ..measure.predictors import TorchPredictor
    from ..train.loop import EncodedDataset, train
    from ..train.losses import objective

    _check(model)
    names = [cfg.primary, *cfg.task_data]
    splits: list[Splits] = [ctx.splits] + [load_splits(d) for d in cfg.task_data.values()]
    for name, s in zip(names, splits):
        ctx.log(f"task {name}: {len(s.train)} train, {len(s.test)} test, labels {s.label_names}")
    net = multi_head(model, [len(s.label_names) for s in splits])
    rows = []
    for t, s in enumerate(splits):
        for r in EncodedDataset(tokenizer, s.train, cfg.max_length).rows:
            rows.append(r | {"task_ids": t})
    data = _Rows(rows)
    net.requires_grad_(True)
    info = train(net, tokenizer, cfg, ctx, loss=objective(without_teacher={"task_ce": 1.0}), train_set=data,
                 extra_columns=("task_ids",))
    net.eval()
    task_metrics = {}
    for t, (name, s) in enumerate(zip(names, splits)):
        if t == 0:
            continue
        metrics, _ = evaluate(TorchPredictor(with_head(model, net.heads[t], s.label_names), tokenizer, ctx.max_length), s.test, 64)
        task_metrics[name] = {k: metrics[k] for k in ("accuracy", "f1_macro")}
        ctx.log(f"task {name}: test accuracy {metrics['accuracy']:.4f}")

    info |= {"tasks": names, "task_metrics": task_metrics, "train_examples_per_task": {n: len(s.train) for n, s in zip(names, splits)}}
    heads = {name: net.heads[t] for t, name in enumerate(names) if t > 0}
    labels = {n: s.label_names for n, s in zip(names, splits)}
    return StageResult(model, tokenizer, info, Artifact("multitask", {"primary": cfg.primary, "heads": heads, "labels": labels}))


class _Rows:
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]
