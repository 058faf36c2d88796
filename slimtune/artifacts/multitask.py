"""A multi-task folder: the primary task's classifier (an HF folder that loads anywhere), plus
`tasks/NAME/head.safetensors` (pooler + classifier of each other task) and `tasks.json`
({"primary": name, "tasks": {name: labels}}). Loading with `task=NAME` swaps that head in.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from ..errors import SlimtuneError
from . import hf

TASKS_FILE = "tasks.json"


def detect(folder: Path) -> bool:
    return (Path(folder) / TASKS_FILE).is_file()


def save(folder: Path, model, tokenizer, primary: str, heads: dict, labels: dict) -> dict:
    """`heads`: task name -> module with `pooler` and `classifier` (the primary's is the model's own);
    `labels`: task name -> label names, primary first."""
    from safetensors.torch import save_file

    hf.save(folder, model, tokenizer)
    for name, head in heads.items():
        (Path(folder) / "tasks" / name).mkdir(parents=True)
        state = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
        save_file(state, str(Path(folder) / "tasks" / name / "head.safetensors"))
    (Path(folder) / TASKS_FILE).write_text(json.dumps({"primary": primary, "tasks": labels}, indent=2))
    return {}


def load(folder: Path, config, new_head: dict | None = None, task: str | None = None):
    model = hf.load(folder, config, new_head)
    return model if task is None else load_task(model, folder, task)


def with_head(model, head, label_names: list[str]):
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
    import torch.nn as nn
    from safetensors.torch import load_file

    meta = json.loads((Path(folder) / TASKS_FILE).read_text())
    if task not in meta["tasks"]:
        raise SlimtuneError(f"{folder}: no task {task!r}; tasks: {', '.join(meta['tasks'])}")
    if task == meta["primary"]:
        return model
    labels = meta["tasks"][task]
    head = nn.ModuleDict({"pooler": copy.deepcopy(model.bert.pooler), "classifier": nn.Linear(model.config.hidden_size, len(labels))})
    head.load_state_dict(load_file(str(Path(folder) / "tasks" / task / "head.safetensors")))
    return with_head(model, head, labels)
