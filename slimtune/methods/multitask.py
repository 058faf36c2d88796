"""Multi-task: one shared backbone, one head (pooler + classifier) per task, trained together.

The recipe's data is the primary task (the runner evaluates it like any stage); `tasks:` adds
more, each with its own data and labels. Rows of all tasks are mixed in every batch; each row's
loss comes from its own task's head (mean CE over the batch). Transformers has no multi-head
sequence classifier, so the training wrapper (`MultiHead`) is written here; it reuses the
model's own encoder, pooler and classifier modules, so the primary task's model is an ordinary
classifier afterwards.

Saved as one artifact: the stage folder is the primary task's classifier (loads anywhere), and
`tasks/NAME/head.safetensors` + `tasks.json` hold the other heads. `load_model(folder,
task=NAME)` (CLI: `--task NAME`) swaps that head in, so predict / eval / export work per task.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import DataConfig, Splits, load_splits
from ..errors import SlimtuneError
from ..train import EncodedDataset, TrainConfig, count_trainable, train
from . import StageContext, register

TASKS_FILE = "tasks.json"


@dataclass
class MultiTaskConfig(TrainConfig):
    primary: str = "main"  # name of the recipe's own data as a task
    tasks: dict[str, dict] = field(default_factory=dict)  # name -> a data block (as the recipe's `data:`)

    def __post_init__(self) -> None:
        super().__post_init__()
        from ..recipe import build

        if not self.tasks or not isinstance(self.tasks, dict):
            raise SlimtuneError("multitask: give at least one extra task under `tasks:` (name: {data block})")
        self.task_data = {}
        for name, block in self.tasks.items():
            if name == self.primary or not name.replace("_", "").replace("-", "").isalnum():
                raise SlimtuneError(f"multitask: task name {name!r} must be unique, letters/digits/_/-")
            self.task_data[name] = build(DataConfig, block, f"multitask.tasks.{name}")


def _check(model) -> None:
    if model.config.model_type not in ("bert", "slimtune_bert"):
        raise SlimtuneError(f"multitask supports BERT-family models; this one is {model.config.model_type!r}")


class MultiHead(nn.Module):
    """Shared encoder; head i = (pooler_i, classifier_i); head 0 is the model's own."""

    def __init__(self, model, label_counts: list[int]):
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
        if task_ids is None:
            task_ids = torch.zeros(len(input_ids), dtype=torch.long)
        logits0 = None
        loss = hidden.new_zeros(())
        for t, head in enumerate(self.heads):
            rows = task_ids == t
            if t > 0 and not rows.any():
                continue
            lg = head["classifier"](self.dropout(head["pooler"](hidden if t == 0 else hidden[rows])))
            if t == 0:
                logits0, lg = lg, lg[rows]
            if labels is not None and rows.any():
                loss = loss + F.cross_entropy(lg, labels[rows], reduction="sum")
        loss = loss / len(input_ids)
        return {"loss": loss, "logits": logits0}


@register("multitask", MultiTaskConfig)
def multitask(model, tokenizer, cfg: MultiTaskConfig, ctx: StageContext):
    """One backbone, a head per task; trained on all tasks' data mixed."""
    _check(model)
    names = [cfg.primary, *cfg.task_data]
    splits: list[Splits] = [ctx.splits] + [load_splits(d) for d in cfg.task_data.values()]
    for name, s in zip(names, splits):
        ctx.log(f"task {name}: {len(s.train)} train, {len(s.test)} test, labels {s.label_names}")
    net = MultiHead(model, [len(s.label_names) for s in splits])
    rows = []
    for t, s in enumerate(splits):
        for r in EncodedDataset(tokenizer, s.train, cfg.max_length).rows:
            rows.append(r | {"task_ids": t})
    data = _Rows(rows)
    net.requires_grad_(True)
    trainable, total = count_trainable(net)
    info = train(net, tokenizer, ctx.splits, cfg, ctx.work_dir / "trainer", callbacks=ctx.callbacks,
                 train_set=data, checkpoint_dir=ctx.checkpoint_dir)
    net.eval()
    task_metrics = {}
    for t, (name, s) in enumerate(zip(names, splits)):
        if t == 0:
            continue
        head_model = with_head(model, net.heads[t], s.label_names)
        from ..metrics import evaluate
        from ..predictors import TorchPredictor

        metrics, _ = evaluate(TorchPredictor(head_model, tokenizer, 128), s.test, 64)
        task_metrics[name] = {k: metrics[k] for k in ("accuracy", "f1_macro")}
        ctx.log(f"task {name}: test accuracy {metrics['accuracy']:.4f}")

    def save(folder: Path) -> None:
        from safetensors.torch import save_file

        from ..exporters import save_hf

        save_hf(model, tokenizer, folder)
        for t, (name, s) in enumerate(zip(names, splits)):
            if t == 0:
                continue
            (folder / "tasks" / name).mkdir(parents=True)
            state = {k: v.detach().contiguous() for k, v in net.heads[t].state_dict().items()}
            save_file(state, str(folder / "tasks" / name / "head.safetensors"))
        (folder / TASKS_FILE).write_text(json.dumps(
            {"primary": cfg.primary, "tasks": {n: s.label_names for n, s in zip(names, splits)}}, indent=2))

    info |= {"trainable_params": trainable, "total_params": total, "tasks": names, "task_metrics": task_metrics,
             "train_examples_per_task": {n: len(s.train) for n, s in zip(names, splits)}, "save": save}
    return model, tokenizer, info


class _Rows:
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def with_head(model, head: nn.ModuleDict, label_names: list[str]):
    """A copy of the primary classifier carrying another task's pooler, classifier and labels."""
    out = copy.deepcopy(model)
    out.bert.pooler = copy.deepcopy(head["pooler"])
    out.classifier = copy.deepcopy(head["classifier"])
    out.config.num_labels = len(label_names)
    out.config.id2label = dict(enumerate(label_names))
    out.config.label2id = {n: i for i, n in enumerate(label_names)}
    out.num_labels = len(label_names)
    return out.eval()


def load_task(model, folder: Path, task: str):
    """Swap in the head of `task` from a multitask folder (the primary task: unchanged)."""
    from safetensors.torch import load_file

    meta_path = Path(folder) / TASKS_FILE
    if not meta_path.is_file():
        raise SlimtuneError(f"{folder}: not a multi-task model (no {TASKS_FILE}); drop --task")
    meta = json.loads(meta_path.read_text())
    if task not in meta["tasks"]:
        raise SlimtuneError(f"{folder}: no task {task!r}; tasks: {', '.join(meta['tasks'])}")
    if task == meta["primary"]:
        return model
    labels = meta["tasks"][task]
    head = nn.ModuleDict({"pooler": copy.deepcopy(model.bert.pooler), "classifier": nn.Linear(model.config.hidden_size, len(labels))})
    head.load_state_dict(load_file(str(Path(folder) / "tasks" / task / "head.safetensors")))
    return with_head(model, head, labels)

