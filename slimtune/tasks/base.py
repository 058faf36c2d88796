"""What a task is: the one class every task plug-in fills in (transformers' pipelines table, with the
table's row as a class), and the registry of tasks.

Everything shared (the recipe parser, the runner, the method and artifact registries, the run
folder, the report files) exists once and asks the recipe's Task for what differs:

    claims, service, data_kind    whether a model folder is one of its models; what `serve` starts for
                                  it; the data its commands read (labelled texts or prompt/response pairs)
    default_length                its one token length when nothing sets one (text.length_for)
    data_config, load_splits      the `data:` block and how it becomes splits
    eval_config, length_keys      the `eval:` block, and which of its keys are token lengths
    extras                        more top-level recipe keys (generate: `int4:`)
    compute                       takes `device:` / `trainer:` and runs under torchrun
    formats, recipe_keys          the export formats of its models; the recipe blocks each one depends on
    prepare                       the default lengths: profile the data, fill unset max_length
    load_model, measure_stage     load a stage's source; measure a finished stage's artifact
    export_reference, export      what an export is checked against; write, check and measure one
    data_summary, report_fields   the report's data line and the task's own fields (+ extra rows)
    markdown, plot                the task's report.md (and plots)

The methods live in the one registry (slimtune/stage.py) under the task's name; a task's module
imports its method modules so that they register. No torch at import time.
"""

from __future__ import annotations

from ..errors import SlimtuneError


class Task:
    name: str = ""
    data_config: type
    eval_config: type
    length_keys: tuple[str, ...] = ("max_length",)  # eval keys that are token lengths (text.check_positions)
    extras: dict[str, type] = {}  # more top-level recipe keys -> their config class
    compute: bool = False  # takes `device:` / `trainer:` and runs under torchrun (distributed.py)
    formats: tuple[str, ...] = ()  # export formats of its models
    recipe_keys: dict[str, tuple[str, ...]] = {}  # format -> top-level recipe blocks its export depends on (fingerprinted)
    default_length: int = 128  # tokens per text when nothing sets one; cut to the model's positions (text.length_for)
    data_kind: str = "labelled"  # what its models read: labelled texts, or prompt/response "pairs" (the CLI's columns)
    service: str = "predict"  # what `slimtune serve` starts for its models: predict (POST /predict) or openai (/v1)
    models_word: str = "models"  # its models in a message: "formats for causal LMs: ..."

    def model_help(self) -> str:
        """What `model:` may name, for the error."""
        return "a folder path"

    def claims(self, model: str) -> bool:
        """Whether `model` (a packaged name or a folder) is one of this task's models, read without
        loading it (`tasks.for_model` asks every task but the default, which takes the rest)."""
        return False

    def check_predict(self, model: str) -> None:
        """Refuse `slimtune predict` (labels for texts) on a model of a task that has no labels."""

    # ---- the recipe (no torch) ----------------------------------------------------------------

    def extras_to_dict(self, extras: dict) -> dict:
        """The extras as recipe.yaml writes them (and the fingerprint reads them)."""
        from ..schema import _nondefault

        return {k: _nondefault(v) for k, v in extras.items()}

    def check(self, recipe) -> None:
        """Checks across keys, once the recipe is parsed."""

    def check_export(self, model: str, fmt: str, recipe: bool = False) -> None:
        """Whether `fmt` can be written for `model` here (a tool it needs, an architecture its
        builder takes): said when the recipe is read (`recipe`) or `export` starts, before any work."""

    # ---- a run --------------------------------------------------------------------------------

    def load_splits(self, data):
        raise NotImplementedError

    def prepare(self, recipe, splits, log):
        """(the data's profile or None, the stages with their lengths filled, the eval config)."""
        return None, list(recipe.stages), recipe.eval

    def load_model(self, source, splits):
        raise NotImplementedError

    def measure_stage(self, folder, splits, ev, log, device: str = "cpu", against=None) -> dict:
        """Metrics of a stage's saved artifact in `folder`; writes what exports compare with beside it."""
        raise NotImplementedError

    def export_reference(self, recipe, source, staged: bool, splits, ev):
        """What an export of `source` is compared with (`staged`: `source` is a finished stage folder)."""
        raise SlimtuneError(f"{recipe.source}: a {self.name} recipe has no export formats")

    def export(self, source, reference, fmt: str, folder, splits, recipe, ev, rf, log, against=None) -> dict:
        """Write `fmt` into `folder` (its temp folder), check it against `reference`; its metrics."""
        raise NotImplementedError

    def data_summary(self, splits) -> dict:
        return {"source": splits.source, **splits.stats}

    def report_fields(self, recipe, splits, ev, rf, log, baseline, rows, compute) -> dict:
        """The task's own report fields (and extra rows, e.g. classify's TF-IDF floor)."""
        return {}

    def markdown(self, report: dict) -> str:
        raise NotImplementedError

    def plot(self, report: dict, out) -> None:
        """Plots beside report.md (none by default)."""


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Make `task` available to recipes as `task: <task.name>`."""
    TASKS[task.name] = task
    return task
