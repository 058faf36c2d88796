"""`slimtune` command line: each subcommand is a thin layer over the library function of its name.

Errors a user can cause print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import api
from .errors import SlimtuneError
from .models import quiet_libraries

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Make a pretrained language model small, fast and good at one task on this machine.",
)

DataOpt = Annotated[str, typer.Option(help="packaged dataset (rotten_tomatoes, tweets_sentiment) or a CSV/TSV/JSONL file")]
TextCol = Annotated[str, typer.Option(help="text column of a data file")]
LabelCol = Annotated[str, typer.Option(help="label column of a data file")]
MaxLen = Annotated[int, typer.Option(help="tokens per text (longer texts are truncated)")]
Task = Annotated[Optional[str], typer.Option(help="one task of a multi-task model (default: its primary task)")]


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML file")],
    out: Annotated[Path, typer.Option("--out", "-o", help="run folder; run again with the same folder to resume")],
):
    """Run a recipe: data, model, stages, exports, report (resumable)."""
    console = _console()
    api.run(recipe, out, log=lambda msg: console.print(msg, markup=False, highlight=False))
    typer.echo((out / "report.md").read_text())
    console.print(f"report: {out / 'report.md'} (json: {out / 'report.json'})", markup=False)


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Argument(help="model folder (HF or holding model.onnx)")],
    data: DataOpt,
    text_column: TextCol = "text",
    label_column: LabelCol = "label",
    split: Annotated[str, typer.Option(help="test (the same split `run` uses) or all")] = "test",
    max_length: MaxLen = 128,
    task: Task = None,
):
    """Accuracy, macro F1/precision/recall and confusion matrix on held-out data."""
    cfg = api.data_config(data, text_column, label_column)
    _print_json(api.evaluate(model, cfg, split=split, max_length=max_length, task=task))


@app.command()
def bench(
    model: Annotated[str, typer.Argument(help="model folder (HF or holding model.onnx)")],
    runs: Annotated[int, typer.Option(help="timed batch-1 runs after warm-up")] = 100,
    data: Annotated[Optional[str], typer.Option(help="texts to time on (default: Rotten Tomatoes test sentences)")] = None,
    text_column: TextCol = "text",
    label_column: LabelCol = "label",
    max_length: MaxLen = 128,
):
    """Latency p50/p95 at batch 1, throughput at batch 32, peak RSS, params, size, hardware."""
    texts = None
    if data:
        from .data import load_splits

        texts = load_splits(api.data_config(data, text_column, label_column)).test.texts[:200]
    _print_json(api.bench(model, texts, runs=runs, max_length=max_length))


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="fine-tuned HF classifier folder")],
    format: Annotated[str, typer.Option("--format", "-f", help="hf, onnx or onnx-int8")] = "onnx",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="output folder (default: MODEL-FORMAT)")] = None,
    data: Annotated[Optional[str], typer.Option(help="check parity and accuracy on this data's test split")] = None,
    text_column: TextCol = "text",
    label_column: LabelCol = "label",
    max_length: MaxLen = 128,
    task: Task = None,
):
    """Export to an HF folder, ONNX or ONNX int8, and check parity with the source."""
    target = out or Path(f"{str(model).rstrip('/')}-{format}")
    cfg = api.data_config(data, text_column, label_column) if data else None
    _print_json(api.export(model, format, target, cfg, max_length=max_length, task=task))


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="model folder (HF or holding model.onnx)")],
    texts: Annotated[list[str], typer.Argument(help="one or more texts")],
    max_length: MaxLen = 256,
    task: Task = None,
):
    """Predicted label and its probability for each text."""
    for text, p in zip(texts, api.predict(model, texts, max_length, task)):
        typer.echo(f"{p.label}\t{p.probability:.4f}\t{text}")


@app.command("profile")
def profile_(
    data: DataOpt,
    model: Annotated[str, typer.Option(help="whose tokenizer counts the tokens: minilm-l6, minilm-l3 or a folder")] = "minilm-l6",
    text_column: TextCol = "text",
    label_column: LabelCol = "label",
    json_: Annotated[bool, typer.Option("--json", help="print the whole profile as JSON")] = False,
):
    """Token lengths per split, [UNK] share, class balance, duplicates removed: the data as the model sees it."""
    from .profile import markdown, profile

    console = _console()
    p = profile(api.data_config(data, text_column, label_column), model,
                log=lambda m: console.print(m, markup=False, highlight=False))
    typer.echo(json.dumps(p, indent=2) if json_ else "\n".join(markdown(p)).strip())


@app.command("auto")
def auto_(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder; run again with the same folder to continue")],
    model: Annotated[str, typer.Option(help="the model to fine-tune and slim: minilm-l6, minilm-l3 or a folder")] = "minilm-l6",
    max_drop: Annotated[float, typer.Option(help="accuracy drop allowed against the fine-tuned reference, on validation (0.01 = 1 point)")] = 0.01,
    max_latency_ms: Annotated[Optional[float], typer.Option(help="batch-1 p50 latency limit")] = None,
    max_size_mb: Annotated[Optional[float], typer.Option(help="size limit on disk (MiB)")] = None,
    minutes: Annotated[float, typer.Option(help="wall-time budget of this run")] = 60,
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL shared by several workers (default: sqlite in OUT)")] = None,
    max_train_samples: Annotated[Optional[int], typer.Option(help="subsample the training split (shorter CPU runs)")] = None,
    text_column: TextCol = "text",
    label_column: LabelCol = "label",
):
    """Search slimmed pipelines for the data under a budget; report, Pareto front and chosen.yaml."""
    from .auto import AutoConfig, auto

    cfg = AutoConfig(api.data_config(data, text_column, label_column, max_train_samples=max_train_samples), model,
                     max_drop, max_latency_ms, max_size_mb, minutes, storage)
    report = auto(cfg, out, progress=True)
    typer.echo((out / "report.md").read_text())
    _console().print(f"report: {out / 'report.md'} (json: {out / 'report.json'}, plot: {out / 'pareto.png'})", markup=False)


def _cli_exceptions():
    """(exit, usage error, abort) classes of the click that typer runs on: typer >= 0.2x vendors
    its own copy, whose classes are not click's, so catching click's alone misses every one."""
    import typer

    if hasattr(typer, "TyperException"):
        return typer.Exit, typer.TyperException, typer.Abort
    import click

    return click.exceptions.Exit, click.ClickException, click.exceptions.Abort


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    debug = "--debug" in sys.argv[1:]  # a global flag: the full traceback of an error
    args = [a for a in sys.argv[1:] if a != "--debug"]
    quiet_libraries()
    exit_, usage, abort = _cli_exceptions()
    try:
        code = app(args, prog_name="slimtune", standalone_mode=False)
    except SlimtuneError as e:
        if debug:
            traceback.print_exception(e)
        print(f"slimtune: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except exit_ as e:
        sys.exit(e.exit_code)
    except usage as e:
        ctx = getattr(e, "ctx", None)
        if ctx is not None and type(e).__name__ == "NoArgsIsHelpError":  # a bare `slimtune`: its help
            typer.echo(ctx.get_help(), err=True)
        else:
            where = ctx.command_path if ctx is not None else "slimtune"
            print(f"slimtune: error: {e.format_message()} (see `{where} --help`)", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, abort):
        print("slimtune: interrupted; finished stages are kept, run the same command to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
