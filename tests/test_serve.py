"""`slimtune serve`: a real uvicorn on a free 127.0.0.1 port over tiny in-process models.

Every request goes to loopback only and every loop is bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import pytest

from slimtune.batching import dynamic_activations
from slimtune.measure.predictors import token_counts
from slimtune.errors import SlimtuneError
from slimtune.server import ServeConfig, Service, load

from conftest import synthetic_rows
from test_cli import assert_one_line_error

TEXTS = [t for t, _ in synthetic_rows(24, seed=3)]
TEXTS = [" ".join([t] * (1 + i % 4)) for i, t in enumerate(TEXTS)]  # mixed lengths: padding differs per batch


@contextmanager
def serving(loaded, **cfg):
    """A real uvicorn server for `loaded` on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    from slimtune.server import bind

    service = Service(loaded, ServeConfig(**cfg))
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(service.app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300  # a bound, not a wait: the loop ends the moment the server is up
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "server did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", service
    finally:
        server.should_exit = True
        thread.join(120)
        sock.close()


def post(url, body, **kw):
    return httpx.post(url + "/predict", json=body, timeout=120, **kw)


async def post_all(url, bodies):
    """All `bodies` at once, each its own request; the JSON answers in order."""
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as client:
        replies = await asyncio.gather(*(client.post(url + "/predict", json=b) for b in bodies))
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies if r.status_code != 200]
    return [r.json() for r in replies]


def metric(text: str, name: str) -> float:
    """The value of one sample line of the Prometheus text (`name` includes its labels)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory, tiny_clf_dir):
    from slimtune.export import write as export
    from slimtune.artifacts import load_model

    model, tok = load_model(tiny_clf_dir)
    out = tmp_path_factory.mktemp("serve") / "int8"
    export(model, tok, "onnx-int8", out)
    (out / "metrics.json").write_text(json.dumps({"metrics": {"accuracy": 0.5, "latency_ms_p50": 1.25}, "fingerprint": {}}))
    return out


@pytest.fixture(scope="module")
def int8(int8_dir):
    return load(int8_dir, ServeConfig(max_length=32))


@pytest.fixture(scope="module")
def torch_clf(tiny_clf_dir):
    return load(tiny_clf_dir, ServeConfig(max_length=32))


@pytest.fixture(scope="module")
def multitask_dir(tmp_path_factory, tiny_clf_dir):
    """The tiny classifier as a multi-task folder: primary task `sentiment` (neg, pos) + `topic` (3 labels)."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("serve") / "mt"
    shutil.copytree(tiny_clf_dir, folder)
    torch.manual_seed(1)
    head = {"pooler.dense.weight": torch.randn(32, 32), "pooler.dense.bias": torch.zeros(32),
            "classifier.weight": torch.randn(3, 32), "classifier.bias": torch.zeros(3)}
    (folder / "tasks" / "topic").mkdir(parents=True)
    save_file(head, str(folder / "tasks" / "topic" / "head.safetensors"))
    (folder / "tasks.json").write_text(json.dumps({"primary": "sentiment", "tasks": {"sentiment": ["neg", "pos"],
                                                                                       "topic": ["a", "b", "c"]}}))
    return folder


# -- requests and their answers ------------------------------------------------------------------


def test_predict_answers_labels_probabilities_and_model_id(int8):
    with serving(int8) as (url, _):
        r = post(url, {"texts": ["a wonderful film", "a dull film"]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"].startswith("int8@sha256:") and len(body["predictions"]) == 2
        for p in body["predictions"]:
            assert p["label"] in ("neg", "pos") and set(p["probabilities"]) == {"neg", "pos"}
            assert p["probability"] == max(p["probabilities"].values()) and abs(sum(p["probabilities"].values()) - 1) < 1e-5
            assert p["truncated"] is False
        one = post(url, {"text": "a wonderful film"}).json()
        assert one["predictions"][0] == body["predictions"][0]
        assert httpx.get(url + "/health").json() == {"status": "ok"}
        assert httpx.get(url + "/ready").status_code == 200
        info = httpx.get(url + "/info").json()
        assert info["labels"] == ["neg", "pos"] and info["max_length"] == 32 and info["runtime"] == "onnx"
        assert info["measured"] == {"accuracy": 0.5, "latency_ms_p50": 1.25} and info["per_row"] is True
        assert info["hardware"]["cores_logical"] >= 1


BAD = [
    ("malformed-json", b'{"texts": ["a", }', {}, 400, "malformed JSON"),
    ("not-an-object", b'["a", "b"]', {}, 422, "must be a JSON object"),
    ("missing-texts", b"{}", {}, 422, 'exactly one of "texts"'),
    ("empty-texts", b'{"texts": []}', {}, 422, "non-empty list"),
    ("texts-not-a-list", b'{"texts": "a"}', {}, 422, "non-empty list"),
    ("non-string-item", b'{"texts": ["a", 3]}', {}, 422, '"texts"[1] must be a string, not int'),
    ("non-string-text", b'{"text": null}', {}, 422, '"text" must be a string'),
    ("text-and-texts", b'{"text": "a", "texts": ["b"]}', {}, 422, "exactly one of"),
    ("unknown-field", b'{"txt": "a"}', {}, 422, "unknown field(s) 'txt'"),
    ("too-many-texts", json.dumps({"texts": ["a"] * 9}).encode(), {}, 413, "9 texts in one request; at most 8"),
    ("body-too-large", json.dumps({"text": "a" * 5000}).encode(), {}, 413, "at most 4096"),
    ("unknown-task", b'{"text": "a", "task": "topic"}', {}, 404, "unknown task 'topic'"),
    ("wrong-content-type", b'{"text": "a"}', {"content-type": "text/plain"}, 415, "application/json"),
    ("no-content-type", b'{"text": "a"}', {"content-type": ""}, 415, "application/json"),
]


def test_bad_requests_get_4xx_json_and_the_server_stays_up(int8):
    with serving(int8, max_texts=8, max_queue=64, max_body_bytes=4096) as (url, service):
        for name, body, headers, status, expected in BAD:
            r = httpx.post(url + "/predict", content=body, headers={"content-type": "application/json"} | headers)
            assert r.status_code == status, (name, r.status_code, r.text)
            assert expected in r.json()["error"], (name, r.json())
        r = httpx.get(url + "/predict")
        assert r.status_code == 405 and "error" in r.json()
        assert post(url, {"texts": ["still up"]}).status_code == 200
        text = httpx.get(url + "/metrics").text
    for status, n in {"400": 1, "422": 8, "413": 2, "404": 1, "415": 2, "200": 1}.items():
        assert metric(text, f'slimtune_requests_total{{endpoint="predict",status="{status}"}}') == n, status


def test_unknown_and_known_tasks_of_a_multitask_folder(multitask_dir):
    loaded = load(multitask_dir, ServeConfig(max_length=32))
    with serving(loaded) as (url, _):
        r = post(url, {"text": "a film", "task": "topic"})
        assert r.status_code == 200 and r.json()["task"] == "topic"
        assert set(r.json()["predictions"][0]["probabilities"]) == {"a", "b", "c"}
        primary = post(url, {"text": "a film"}).json()
        assert primary["task"] == "sentiment" and set(primary["predictions"][0]["probabilities"]) == {"neg", "pos"}
        r = post(url, {"text": "a film", "task": "weather"})
        assert r.status_code == 404 and r.json()["error"] == "unknown task 'weather'; tasks: sentiment, topic"
        assert httpx.get(url + "/info").json()["tasks"] == {"sentiment": ["neg", "pos"], "topic": ["a", "b", "c"]}


def test_long_text_is_truncated_and_the_answer_says_so(int8):
    long_text = " ".join(["wonderful"] * 100)  # ~100 tokens > max_length 32
    with serving(int8) as (url, _):
        body = post(url, {"texts": ["short", long_text]}).json()
        metrics = httpx.get(url + "/metrics").text
    short, long_ = body["predictions"]
    assert short["truncated"] is False and "tokens" not in short
    assert long_["truncated"] is True and long_["tokens"] == 102  # 100 words + [CLS] [SEP]
    assert body["warnings"] == ["text 1 has 102 tokens; only the first 32 were read (max_length)"]
    assert metric(metrics, "slimtune_truncated_texts_total") == 1


def test_token_counts_flags_exactly_the_texts_over_max_length(int8):
    pred = int8.predictors[None]
    texts = [" ".join(["film"] * n) for n in (29, 30, 31, 200)] + ["é" * 40]  # 30 + 2 specials = 32: fits
    counts = token_counts(pred, texts)
    full = [len(ids) for ids in pred.tokenizer(texts, truncation=False)["input_ids"]]
    assert counts == [n if n > 32 else None for n in full]
    assert counts[:4] == [None, None, 33, 202]
    # what the server uses: the same counts from the tokenization that feeds the model
    assert pred.logits_and_tokens(texts)[1] == counts


# -- batching, invariance, overload ----------------------------------------------------------------


def test_concurrent_requests_are_gathered_into_batches(torch_clf):
    assert torch_clf.dynamic == {None: False}  # fp32: batched
    alone = [torch_clf.predictors[None].logits([t]).argmax() for t in TEXTS]
    # a wait bound far above how long 24 requests take to arrive, even on a busy machine: the batch
    # closes the moment it holds all of them (max_batch), so the test never waits it out
    with serving(torch_clf, max_batch=len(TEXTS), max_wait_ms=10_000) as (url, _):
        answers = asyncio.run(post_all(url, [{"text": t} for t in TEXTS]))
        text = httpx.get(url + "/metrics").text
    batches = metric(text, "slimtune_batch_size_count")
    assert metric(text, "slimtune_batch_size_sum") == len(TEXTS)
    assert batches < len(TEXTS) / 2, f"{len(TEXTS)} concurrent texts ran in {batches} batches"
    assert metric(text, 'slimtune_batch_size_bucket{le="1.0"}') < batches  # some batch held more than one text
    assert [a["predictions"][0]["label"] for a in answers] == [["neg", "pos"][k] for k in alone]


def test_dynamic_int8_is_detected(int8, torch_clf, tiny_clf_dir, tmp_path):
    from slimtune.export import write as export
    from slimtune.artifacts import load_model
    from slimtune.artifacts import load_predictor

    assert dynamic_activations(int8.predictors[None]) is True
    assert dynamic_activations(torch_clf.predictors[None]) is False
    export(*load_model(tiny_clf_dir), "onnx", tmp_path / "fp32")
    assert dynamic_activations(load_predictor(tmp_path / "fp32")) is False


def _crowds(texts, seed=0):
    """Each text inside random requests of 1-6 texts of mixed lengths."""
    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    bodies, i = [], 0
    while i < len(order):
        n = rng.randint(1, 6)
        bodies.append([texts[j] for j in order[i : i + n]])
        i += n
    return [{"texts": b} for b in bodies]


def _served_probabilities(url, texts, seed):
    alone = {t: post(url, {"text": t}).json()["predictions"][0]["probabilities"] for t in texts}
    bodies, crowd = _crowds(texts, seed), {}
    for body, answer in zip(bodies, asyncio.run(post_all(url, bodies))):
        crowd |= {t: p["probabilities"] for t, p in zip(body["texts"], answer["predictions"])}
    return alone, crowd


def test_dynamic_int8_answers_do_not_depend_on_batch_mates(int8):
    with serving(int8, max_batch=32, max_wait_ms=50) as (url, _):
        alone, crowd = _served_probabilities(url, TEXTS, seed=0)
        text = httpx.get(url + "/metrics").text
    assert crowd == alone  # bit for bit, not only the labels
    assert metric(text, 'slimtune_batch_size_bucket{le="1.0"}') == metric(text, "slimtune_batch_size_count")  # one per call


def test_two_workers_answer_as_one_does(int8):
    with serving(int8, max_batch=8, max_wait_ms=20, workers=2) as (url, service):
        alone, crowd = _served_probabilities(url, TEXTS, seed=1)
        assert len(service.batcher._threads) == 2
    assert crowd == alone


def test_batching_dynamic_int8_would_change_answers(int8):
    """The control: the same int8 model with per-row off gives batch-dependent probabilities."""
    with serving(int8, max_batch=32, max_wait_ms=50, per_row="off") as (url, _):
        alone, crowd = _served_probabilities(url, TEXTS, seed=0)
        text = httpx.get(url + "/metrics").text
    assert metric(text, 'slimtune_batch_size_bucket{le="1.0"}') < metric(text, "slimtune_batch_size_count")  # crowds formed
    assert sum(crowd[t] != alone[t] for t in TEXTS) > 0


def test_full_queue_answers_503_with_retry_after(int8):
    held, release = threading.Event(), threading.Event()
    pred = int8.predictors[None]
    slow = type(pred).__new__(type(pred))
    slow.__dict__ |= pred.__dict__
    # holds the worker until released (the bound only keeps a broken test from hanging)
    slow.forward = lambda enc: (held.set(), release.wait(120), pred.forward(enc))[2]
    loaded = dataclasses.replace(int8, predictors={None: slow})

    async def scenario(url):
        async with httpx.AsyncClient(timeout=120) as client:
            first = asyncio.create_task(client.post(url + "/predict", json={"texts": ["a", "b", "c", "d"]}))
            # the worker holds "a" (and what came with it), the rest wait: 4 of 4 queue slots taken
            assert await asyncio.to_thread(held.wait, 120), "the worker never took the first request"
            rejected = await client.post(url + "/predict", json={"text": "e"})
            metrics = (await client.get(url + "/metrics")).text
            release.set()
            return await first, rejected, metrics

    with serving(loaded, max_queue=4, max_texts=4) as (url, _):
        first, rejected, metrics = asyncio.run(scenario(url))
        assert post(url, {"text": "e"}).status_code == 200  # and it serves again once the queue drains
    assert rejected.status_code == 503 and rejected.headers["retry-after"] == "1"
    assert "queue full" in rejected.json()["error"]
    assert first.status_code == 200 and len(first.json()["predictions"]) == 4
    assert metric(metrics, "slimtune_queue_depth") == 4


def test_config_is_checked():
    with pytest.raises(SlimtuneError, match="max-batch must be at least 1"):
        ServeConfig(max_batch=0)
    with pytest.raises(SlimtuneError, match="per-row must be auto, on or off"):
        ServeConfig(per_row="maybe")


# -- the command ----------------------------------------------------------------------------------


def test_serve_bad_input_exits_2_with_one_line(tmp_path, int8_dir, slimtune_in_process):
    assert_one_line_error(slimtune_in_process("serve", tmp_path / "nowhere", "--port", "0"), "model not found")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line_error(slimtune_in_process("serve", int8_dir, "--port", port), f"cannot listen on 127.0.0.1:{port}")


def test_sigterm_drains_in_flight_requests_and_exits_0(int8_dir):
    exe = shutil.which("slimtune", path=str(__import__("pathlib").Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "slimtune.cli"]
    # per-row off and a 3 s wait: a request is still waiting for batch-mates when SIGTERM arrives
    proc = subprocess.Popen([*cmd, "serve", str(int8_dir), "--port", "0", "--per-row", "off", "--max-wait-ms", "3000"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line, deadline = "", time.monotonic() + 600  # a bound for a hung start on a busy machine
        while "ready on" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stderr.readline()
        assert "ready on http://127.0.0.1:" in line, line
        url = line.split("ready on ")[1].split()[0]
        reply = {}
        sender = threading.Thread(target=lambda: reply.setdefault("r", post(url, {"text": "in flight"})))
        sender.start()
        deadline = time.monotonic() + 120  # until the server holds the request (it waits there 3 s)
        while metric(httpx.get(url + "/metrics", timeout=120).text, "slimtune_queue_depth") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        sender.join(120)
        code = proc.wait(300)
        rest = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert reply["r"].status_code == 200 and reply["r"].json()["predictions"][0]["label"] in ("neg", "pos")
    assert code == 0, rest
    assert "slimtune serve: stopped" in rest and "Traceback" not in rest
