"""Task plug-ins: what differs between classifying and generating (see base.py for the interface).

    from slimtune.tasks import get
    get("generate").formats        # ('hf', 'genai-fp32', 'genai-int4')

A new task is one module (a `Task` subclass) plus one line in `_builtins` (or one
`register(MyTask())` call from outside the package). The built-in tasks are imported on first use,
not when this package is: the modules below (a generate method registering under
`names.GENERATE`) import `slimtune.tasks.names`, which runs this file first.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SlimtuneError
from .base import TASKS, Task, register
from .names import CLASSIFY, GENERATE

__all__ = ["CLASSIFY", "GENERATE", "TASKS", "Task", "check_format", "for_model", "formats_for", "get", "names", "register",
           "task_of"]

_loaded = False


def _builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from .classify import Classify
    from .generate import Generate

    register(Classify())
    register(Generate())


def names() -> list[str]:
    """The registered tasks, the default (classify) first."""
    _builtins()
    return [CLASSIFY, *sorted(n for n in TASKS if n != CLASSIFY)]


def get(name: str, where: str = "") -> Task:
    """The task registered as `name`; else one line naming the registered ones."""
    _builtins()
    if not isinstance(name, str) or name not in TASKS:
        *first, last = [f"{CLASSIFY} (the default)", *names()[1:]]
        listed = f"{', '.join(first)} or {last}" if first else last
        raise SlimtuneError(f"{where + ': ' if where else ''}task must be {listed}, not {name!r}")
    return TASKS[name]


def for_model(model: str | Path) -> Task:
    """The task whose model `model` is: the first other task that claims it (generate: a packaged
    decoder, a causal-LM folder, a GenAI or GGUF export), else the default (classify). Read from
    config.json alone, so eval, bench, predict, serve and export pick their path before anything loads."""
    _builtins()
    others = (TASKS[n] for n in names()[1:])
    return next((t for t in others if t.claims(str(model))), TASKS[CLASSIFY])


def task_of(model: str | Path) -> str:
    """The name of `for_model(model)`."""
    return for_model(model).name


def formats_for(task: str) -> list[str]:
    """The export formats registered for a task (what `--format` accepts for such a model)."""
    return list(get(task).formats)


def check_format(model: str | Path, fmt: str) -> str:
    """The model's task, after checking that `fmt` is one of its formats (one line naming them)."""
    task = task_of(model)
    allowed = formats_for(task)
    if fmt not in allowed:
        what = get(task).models_word
        raise SlimtuneError(f"export format {fmt!r} is not one for {what} ({model}); formats for {what}: {', '.join(allowed)}")
    get(task).check_export(str(model), fmt)
    return task
