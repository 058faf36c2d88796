"""Token lengths against the model that reads them (the text layer: below measure, above model).

`check_positions` runs when a recipe is read, so a length no model of the run can hold is one line
before any stage, not a position-embedding error minutes into one. The rest of tokenization and
lengths (issue 26: one module for tokenizer loading, truncation, the data-derived max_length and one
default per task) moves here next.
"""

from __future__ import annotations

from .errors import SlimtuneError
from .model.folders import positions
from .schema import FROM_MODEL, Stage


def check_positions(source: str, model: str, stages: list[Stage], ev, eval_keys: tuple[str, ...]) -> None:
    """Every token length of a recipe (each stage's `max_length`, the eval block's `eval_keys`)
    against the position table of the model it runs on, when the recipe is read: `max_length:
    100000` would otherwise fail minutes into a stage. The limits come from config.json alone
    (`model.folders.positions`: no weights read, no packaged model converted). A stage runs on the
    previous stage's model (or its `from:`); a stage's `student` (distill: a packaged name or a
    folder) is the model after it, and its `teacher`, when named, bounds it too. A model whose
    limit is unknown (a folder not there yet: loading it says so) is not checked."""
    def bound(name: str) -> tuple[int | None, str]:
        return positions(name), name

    base = last = bound(model)
    made: dict[str, tuple[int | None, str]] = {}
    for i, st in enumerate(stages):
        into = base if st.source == FROM_MODEL else made[st.source] if st.source else last
        student, teacher = getattr(st.config, "student", None), getattr(st.config, "teacher", None)
        out = into if student in (None, "truncate", "shrink") else bound(student)  # truncate/shrink keep the positions
        bounds = [into, out] + ([bound(teacher)] if teacher else [])
        _fits(getattr(st.config, "max_length", None), bounds, f"{source}: stages[{i}] ({st.name}) max_length")
        made[st.name] = last = out
    for key in eval_keys:  # every artifact of the run is measured with them
        _fits(getattr(ev, key), [base, *made.values()], f"{source}: eval.{key}")


def _fits(value: int | None, bounds: list[tuple[int | None, str]], what: str) -> None:
    for limit, name in bounds:
        if value is not None and limit is not None and value > limit:
            raise SlimtuneError(f"{what} {value} is more than the model's {limit} positions ({name})")
