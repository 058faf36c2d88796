"""`slimtune serve` batching on ONNX artifacts: concurrent requests coalesce on fp32, dynamic int8
runs one text per call (and says so), tokenization happens once per text on the worker threads,
and 32 concurrent clients get `slimtune predict`'s answers. Nothing here depends on timing: a
batch closes when it is full, and every wait is a bound, not a delay."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections import Counter

import httpx
import pytest

from slimtune.artifacts import load_predictor
from slimtune.batching import Batcher
from slimtune.measure.predictors import token_counts
from slimtune.server import ServeConfig, load

from test_cli import slimtune
from test_serve import TEXTS, metric, post_all, serving

LONG = " ".join(["wonderful"] * 60)  # 62 tokens: over max_length 32, so its full count is asked for


@pytest.fixture(scope="module")
def fp32_dir(tmp_path_factory, tiny_clf_dir):
    from slimtune.artifacts import load_model
    from slimtune.export import write as export

    out = tmp_path_factory.mktemp("serve-batching") / "fp32"
    export(*load_model(tiny_clf_dir), "onnx", out)
    return out


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory, tiny_clf_dir):
    from slimtune.artifacts import load_model
    from slimtune.export import write as export

    out = tmp_path_factory.mktemp("serve-batching") / "int8"
    export(*load_model(tiny_clf_dir), "onnx-int8", out)
    return out


class _Recorded:
    """A tokenizers.Tokenizer that records each text it encodes and the thread that encoded it."""

    def __init__(self, inner, calls: list):
        self.inner, self.calls = inner, calls

    def encode(self, text, *args, **kw):
        self.calls.append((text, threading.current_thread().name))
        return self.inner.encode(text, *args, **kw)

    def encode_batch(self, texts, *args, **kw):
        self.calls.extend((t, threading.current_thread().name) for t in texts)
        return self.inner.encode_batch(texts, *args, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def recording(pred) -> list[tuple[str, str]]:
    """Wraps every way `pred` tokenizes, its (real) tokenizer's `__call__` and the fast encoder's
    copy of its Rust backend, so that each text tokenized is recorded with its thread's name."""
    calls: list[tuple[str, str]] = []
    tok = copy.deepcopy(pred.tokenizer)
    base = type(tok)

    def call(self, text, *args, **kw):
        calls.extend((t, threading.current_thread().name) for t in ([text] if isinstance(text, str) else text))
        return base.__call__(self, text, *args, **kw)

    tok.__class__ = type(f"Recorded{base.__name__}", (base,), {"__call__": call})
    pred.tokenizer = tok
    pred.encode(["builds the fast encoder"])
    calls.clear()
    pred._fast.backend = _Recorded(pred._fast.backend, calls)
    return calls


@pytest.mark.parametrize("artifact, per_row", [("fp32", False), ("int8", True)])
def test_each_text_is_tokenized_once_long_ones_too(artifact, per_row, fp32_dir, int8_dir):
    # before: a text over ~126 bytes was tokenized again (untruncated) to count what was cut
    loaded = load(fp32_dir if artifact == "fp32" else int8_dir, ServeConfig(max_length=32))
    assert loaded.dynamic[None] is per_row
    pred = loaded.predictors[None]
    calls = recording(pred)
    # under 30 bytes (cannot be cut: never counted), cut, and two of over 30 bytes that fit in 32 tokens
    texts = ["a wonderful film", LONG, "word " * 30, "é" * 40]
    answers = Batcher._run(pred, texts, per_row)
    assert Counter(t for t, _ in calls) == Counter(texts)
    reference = token_counts(load_predictor(fp32_dir, 32), texts)  # a second, untruncated tokenization
    assert [a.tokens for a in answers] == reference == [None, 62, None, None]


def test_concurrent_requests_coalesce_on_fp32_onnx(fp32_dir):
    loaded = load(fp32_dir, ServeConfig(max_length=32))
    assert loaded.dynamic == {None: False}
    # the wait bound is far above how long 24 requests take to arrive: the batch closes the moment
    # it holds all of them (max_batch), so the test never waits it out
    with serving(loaded, max_batch=len(TEXTS), max_wait_ms=10_000) as (url, _):
        answers = asyncio.run(post_all(url, [{"text": t} for t in TEXTS]))
        text = httpx.get(url + "/metrics").text
    batches = metric(text, "slimtune_batch_size_count")
    assert metric(text, "slimtune_batch_size_sum") == len(TEXTS) == len(answers)
    assert batches < len(TEXTS) / 2, f"{len(TEXTS)} concurrent texts ran in {batches} batches"
    assert metric(text, 'slimtune_batch_size_bucket{le="1.0"}') < batches  # some batch held more than one text
    assert metric(text, 'slimtune_one_text_per_call{task="model"}') == 0


def test_dynamic_int8_runs_one_text_per_call_and_says_so(int8_dir):
    loaded = load(int8_dir, ServeConfig(max_length=32))
    with serving(loaded, max_batch=len(TEXTS), max_wait_ms=10_000) as (url, service):
        asyncio.run(post_all(url, [{"text": t} for t in TEXTS]))
        text = httpx.get(url + "/metrics").text
        info = httpx.get(url + "/info").json()
    assert metric(text, 'slimtune_one_text_per_call{task="model"}') == 1 and info["per_row"] is True
    assert metric(text, 'slimtune_batch_size_bucket{le="1.0"}') == metric(text, "slimtune_batch_size_count") == len(TEXTS)


def test_tokenization_runs_on_the_worker_threads(fp32_dir):
    loaded = load(fp32_dir, ServeConfig(max_length=32))
    calls = recording(loaded.predictors[None])
    sent = TEXTS[:8] + [LONG]
    with serving(loaded, max_batch=4, workers=1) as (url, _):
        asyncio.run(post_all(url, [{"texts": sent[i : i + 3]} for i in range(0, len(sent), 3)]))
    assert Counter(t for t, _ in calls) == Counter(sent)  # once each, the long one too
    threads = {name for _, name in calls}
    assert threads and all(name.startswith("slimtune-infer-") for name in threads), threads


def test_32_concurrent_clients_get_what_slimtune_predict_answers(fp32_dir):
    pool = TEXTS + [LONG, "a dull film", "a wonderful film", "😀 naïve café"]
    proc = slimtune("predict", fp32_dir, *pool, "--json", "--max-length", "32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = {row["text"]: row for row in map(json.loads, proc.stdout.splitlines())}
    assert set(expected) == set(pool)
    cut = {t for t, n in zip(pool, token_counts(load_predictor(fp32_dir, 32), pool)) if n is not None}
    assert LONG in cut and len(cut) < len(pool)

    loaded = load(fp32_dir, ServeConfig(max_length=32))
    replies: dict[int, list] = {}
    start = threading.Barrier(32, timeout=120)  # every client connected before any sends: they overlap

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            c.get("/health")
            start.wait()
            out = []
            for r in range(4):  # 4 requests of 1-3 texts each, a different mix per client
                texts = [pool[(k * 7 + r * 3 + j) % len(pool)] for j in range(1 + (k + r) % 3)]
                reply = c.post("/predict", json={"texts": texts})
                out.append((texts, reply.status_code, reply.json()))
            replies[k] = out

    with serving(loaded, max_batch=32, max_wait_ms=5) as (url, _):
        clients = [threading.Thread(target=client, args=(k,)) for k in range(32)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(300)
        text = httpx.get(url + "/metrics").text
    assert len(replies) == 32
    assert metric(text, 'slimtune_requests_total{endpoint="predict",status="200"}') == 32 * 4
    for k, out in replies.items():
        for texts, status, body in out:
            assert status == 200, (k, body)
            for t, p in zip(texts, body["predictions"], strict=True):
                want = expected[t]
                assert p["label"] == want["label"], (t, p, want)
                assert p["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5), t
                assert p["truncated"] is (t in cut)
