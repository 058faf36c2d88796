"""Issue 28 item 3: `slimtune serve` over a causal LM speaks OpenAI's API, checked with the real
`openai` client against a real uvicorn on a free 127.0.0.1 port (a tiny random Llama built here).

Greedy answers are compared with the same `Decoder` run in-process; streamed text with the
non-streamed one; sampled answers with themselves under one seed. Every request goes to
loopback only and every wait is bounded.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from slimtune.decoder.chat import chat_prompt
from slimtune.decoder.measure import Decoder
from slimtune.decoder.pieces import StopAt, text_pieces
from slimtune.openai_service import LMService, LoadedLM, load_lm
from slimtune.server import ServeConfig

from _tiny_llama import build_tokenizer

ASK = [{"role": "user", "content": "What is the capital of France?"}]
NEW = 16  # tokens per answer: the tiny model never ends on its own, so answers are exactly this long


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """The tiny Llama, untied and initialised wide (std 0.3): the tied 0.02 one answers every prompt
    with the same repeated newline, which could not tell one request's answer from another's."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("openai") / "llama"
    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False, initializer_range=0.3)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lm(llama_dir):
    return load_lm(llama_dir)


@contextmanager
def serving(loaded, **cfg):
    """A real uvicorn for `loaded` on a free loopback port, in a thread; yields (openai client, base URL, service)."""
    import uvicorn

    from slimtune.server import bind

    service = LMService(loaded, ServeConfig(**cfg))
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(service.app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300  # a bound, not a wait: the loop ends the moment the server is up
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "server did not start"
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
    try:
        yield client, url, service
    finally:
        client.close()
        server.should_exit = True
        thread.join(20)
        sock.close()


def greedy(dec: Decoder, messages: list[dict], n: int = NEW) -> str:
    """The answer computed in-process: the chat template, then the decoder's greedy token stream."""
    ids = dec.tokenizer(chat_prompt(dec.tokenizer, messages), add_special_tokens=False)["input_ids"]
    return dec.tokenizer.decode(list(dec.stream(ids, n)), skip_special_tokens=True)


def streamed(client, **kw) -> tuple[str, list[str], str | None]:
    """(joined text, the pieces, finish_reason) of a streamed chat completion."""
    pieces, finish = [], None
    for chunk in client.chat.completions.create(stream=True, **kw):
        assert chunk.object == "chat.completion.chunk"
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            finish = c.finish_reason or finish
    return "".join(pieces), pieces, finish


# -- answers ---------------------------------------------------------------------------------------


def test_chat_greedy_equals_the_decoder_in_process_and_streams_the_same_text(lm):
    expected = greedy(lm.decoder, ASK)
    assert len(expected) > 5
    with serving(lm) as (client, url, _):
        models = client.models.list()
        assert [m.id for m in models.data] == ["llama"]
        r = client.chat.completions.create(model="llama", messages=ASK, temperature=0, max_tokens=NEW)
        assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "llama"
        assert r.system_fingerprint == lm.model_id
        assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == expected
        assert r.choices[0].finish_reason == "length" and r.choices[0].index == 0
        prompt_len = len(lm.decoder.tokenizer(chat_prompt(lm.decoder.tokenizer, ASK), add_special_tokens=False)["input_ids"])
        assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (prompt_len, NEW, prompt_len + NEW)
        text, pieces, finish = streamed(client, model="llama", messages=ASK, temperature=0, max_tokens=NEW)
        assert text == expected and finish == "length" and len(pieces) > 1
        # the same model under its fingerprint; usage at the end of a stream when asked for
        chunks = list(client.chat.completions.create(model=lm.model_id, messages=ASK, temperature=0, max_tokens=NEW,
                                                     stream=True, stream_options={"include_usage": True}))
        assert chunks[-1].usage.completion_tokens == NEW and chunks[-1].choices == []
        # /v1/completions: the prompt as it is
        c = client.completions.create(model="llama", prompt="Paris is", temperature=0, max_tokens=8)
        ids = lm.decoder.tokenizer("Paris is")["input_ids"]
        want = lm.decoder.tokenizer.decode(list(lm.decoder.stream(ids, 8)), skip_special_tokens=True)
        assert c.object == "text_completion" and c.choices[0].text == want and c.usage.prompt_tokens == len(ids)
        assert "".join(ch.choices[0].text for ch in client.completions.create(
            model="llama", prompt="Paris is", temperature=0, max_tokens=8, stream=True)) == want
        assert httpx.get(url + "/health").json() == {"status": "ok"}
        metrics = httpx.get(url + "/metrics").text
    assert f"slimtune_completion_tokens_total {float(3 * NEW + 16)}" in metrics
    assert 'slimtune_requests_total{endpoint="chat",status="200"} 3.0' in metrics


def test_a_seed_makes_sampling_reproducible(lm):
    with serving(lm) as (client, _, _):
        def sample(seed, **kw):
            return client.chat.completions.create(model="llama", messages=ASK, temperature=1.0, seed=seed,
                                                  max_tokens=NEW, **kw).choices[0].message.content

        first = sample(7)
        assert sample(7) == first and sample(8) != first
        assert first != greedy(lm.decoder, ASK)  # the default temperature samples (1.0, as OpenAI)
        assert streamed(client, model="llama", messages=ASK, seed=7, max_tokens=NEW)[0] == first
        # a nucleus this narrow holds the most probable token only: greedy
        assert sample(7, top_p=1e-9) == greedy(lm.decoder, ASK)


def test_stop_strings_cut_the_answer_and_say_stop(lm):
    expected = greedy(lm.decoder, ASK)
    at = next(i for i in range(4, len(expected) - 2) if "\ufffd" not in expected[i:i + 2])
    stop = expected[at:at + 2]
    cut = expected[:expected.find(stop)]
    assert len(cut) >= 1
    with serving(lm) as (client, _, _):
        for stops in (stop, ["never-there", stop]):
            r = client.chat.completions.create(model="llama", messages=ASK, temperature=0, max_tokens=NEW, stop=stops)
            assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop"
            text, _, finish = streamed(client, model="llama", messages=ASK, temperature=0, max_tokens=NEW, stop=stops)
            assert text == cut and finish == "stop"
        r = client.chat.completions.create(model="llama", messages=ASK, temperature=0, max_tokens=NEW, stop="never-there")
        assert r.choices[0].message.content == expected and r.choices[0].finish_reason == "length"


def test_stop_text_is_held_back_until_it_cannot_be_a_stop_string():
    cut = StopAt(["END"])
    assert [cut.feed(p) for p in ("abc E", "N", "X")] + [cut.flush()] == ["abc ", "", "ENX", ""]
    cut = StopAt(["END", "xyz"])
    assert [cut.feed(p) for p in ("abc E", "ND more", "ignored")] == ["abc ", "", ""] and cut.stopped
    assert cut.flush() == ""


def test_a_base_model_without_a_chat_template_gets_the_plain_one(llama_dir, tmp_path):
    tok = build_tokenizer()
    tok.chat_template = None
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    assert chat_prompt(tok, turns) == "System: Be brief.\n\nUser: Hi\nAssistant: Hello\nUser: Bye\nAssistant:"
    base = tmp_path / "base"
    shutil.copytree(llama_dir, base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    (base / "chat_template.jinja").unlink(missing_ok=True)
    loaded = load_lm(base)
    assert not loaded.decoder.tokenizer.chat_template
    plain = loaded.decoder.tokenizer("User: What is AI?\nAssistant:", add_special_tokens=False)["input_ids"]
    want = loaded.decoder.tokenizer.decode(list(loaded.decoder.stream(plain, 8)), skip_special_tokens=True)
    with serving(loaded) as (client, _, _):
        r = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "What is AI?"}],
                                           temperature=0, max_tokens=8)
    assert r.choices[0].message.content == want and r.usage.prompt_tokens == len(plain)


# -- text assembly: characters over byte-level tokens ----------------------------------------------


ZH = "你好，世界！今天天气很好。"


def test_pieces_never_split_a_character_and_join_to_the_whole_decode():
    tok = build_tokenizer()
    ids = tok(ZH, add_special_tokens=False)["input_ids"]
    assert len(ids) >= 2 * len(ZH)  # the tiny vocabulary has no Chinese merges: bytes, 3 tokens a character
    assert "\ufffd" in tok.decode(ids[:1])  # a token alone is half a character
    pieces = list(text_pieces(tok, ids))
    assert "".join(pieces) == tok.decode(ids) == ZH
    assert all("\ufffd" not in p for p in pieces) and len(pieces) == len(ZH)
    # ids that end inside a character: the pieces still join to what decoding them gives
    assert "".join(text_pieces(tok, ids[:4])) == tok.decode(ids[:4])


class Scripted(Decoder):
    """A `Decoder` that answers with fixed ids (any Decoder plugs into the server); it waits for
    `release` before answering when given one."""

    kind = "scripted"

    def __init__(self, answer_ids: list[int], release: threading.Event | None = None):
        self.tokenizer, self.ids, self.release = build_tokenizer(), answer_ids, release
        self._stop = self.eos_ids()
        self.max_positions = 256

    def stream(self, ids, max_new_tokens, stop=True, sampling=None):
        if self.release is not None:
            assert self.release.wait(30)
        yield from self.ids[:max_new_tokens]


def scripted(dec: Decoder, folder: Path) -> LoadedLM:
    return LoadedLM(folder, "scripted", "scripted@sha256:0", dec)


def test_chinese_streams_whole_characters_as_utf8_json(tmp_path):
    tok = build_tokenizer()
    ids = tok(ZH, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    with serving(scripted(Scripted(ids), tmp_path)) as (client, url, _):
        text, pieces, finish = streamed(client, model="scripted", messages=ASK, max_tokens=100)
        assert text == ZH and finish == "stop" and len(pieces) == len(ZH)  # ended by <|im_end|>, not by length
        with httpx.stream("POST", url + "/v1/chat/completions", timeout=30,
                          json={"model": "scripted", "messages": ASK, "stream": True}) as r:
            raw = b"".join(r.iter_bytes())
        assert r.headers["content-type"].startswith("text/event-stream")
    events = raw.decode("utf-8").split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""] and all(e.startswith("data: ") for e in events[:-1])
    assert "你".encode() in raw and b"\\u" not in raw  # UTF-8 on the wire, no \uXXXX escapes
    assert json.loads(events[0][6:])["choices"][0]["delta"] == {"role": "assistant", "content": ""}


# -- client errors ---------------------------------------------------------------------------------


BAD = [  # (what, request fields, status, the message holds, param)
    ("missing-messages", {}, 400, '"messages" must be given', "messages"),
    ("messages-not-a-list", {"messages": "hi"}, 400, '"messages" must be a non-empty list', "messages"),
    ("bad-role", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role must be one of", "messages[0].role"),
    ("content-not-text", {"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content must be a string", "messages[0].content"),
    ("max-tokens-0", {"max_tokens": 0}, 400, "max_tokens must be at least 1, not 0", "max_tokens"),
    ("max-tokens-past-positions", {"max_tokens": 500}, 400, "max_tokens=500 is too large: the prompt has", "max_tokens"),
    ("max-tokens-not-int", {"max_tokens": "8"}, 400, '"max_tokens" must be an integer, not a string', "max_tokens"),
    ("temperature-negative", {"temperature": -0.1}, 400, "temperature must be from 0 to 2, not -0.1", "temperature"),
    ("temperature-over-2", {"temperature": 2.5}, 400, "temperature must be from 0 to 2", "temperature"),
    ("top-p-0", {"top_p": 0}, 400, "top_p must be above 0 and at most 1, not 0", "top_p"),
    ("top-p-over-1", {"top_p": 1.5}, 400, "top_p must be above 0 and at most 1", "top_p"),
    ("stop-empty", {"stop": ""}, 400, '"stop" must be a non-empty string or a list of them', "stop"),
    ("stop-too-many", {"stop": list("abcde")}, 400, '"stop" holds 5 strings; at most 4', "stop"),
    ("n-2", {"n": 2}, 400, "n=2 is not supported (only 1)", "n"),
    ("seed-not-int", {"seed": 1.5}, 400, '"seed" must be an integer, not a number', "seed"),
    ("unknown-field", {"tools": []}, 400, "unrecognized request argument: 'tools'", "tools"),
    ("unknown-model", {"model": "gpt-4"}, 404, "the model 'gpt-4' does not exist; this server serves 'llama'", "model"),
]


@pytest.mark.parametrize("what, fields, status, message, param", BAD, ids=[b[0] for b in BAD])
def test_bad_fields_are_4xx_in_openai_shape(lm, what, fields, status, message, param, _server):
    client, url = _server
    body = {"model": "llama", "messages": ASK, "max_tokens": 4} | fields
    if what == "missing-messages":
        del body["messages"]
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert message in err["message"] and err["param"] == param, err


@pytest.fixture(scope="module")
def _server(lm):
    with serving(lm) as (client, url, _):
        yield client, url


def test_the_openai_client_raises_bad_request_and_not_found(_server):
    client, url = _server
    with pytest.raises(openai.BadRequestError, match="temperature must be from 0 to 2"):
        client.chat.completions.create(model="llama", messages=ASK, temperature=3)
    with pytest.raises(openai.BadRequestError, match=r"max_tokens=9999 is too large"):
        client.completions.create(model="llama", prompt="hi", max_tokens=9999)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=ASK)
    long = "word " * 400
    with pytest.raises(openai.BadRequestError, match=r"the prompt has \d+ tokens; this model reads at most 256 positions"):
        client.completions.create(model="llama", prompt=long, max_tokens=1)


HOSTILE = [  # the classifier's body checks (service.py), in OpenAI's shape
    ("malformed-json", b'{"model": "llama", ', 400, "malformed JSON"),
    ("deep-json", b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "JSON nested too deep"),
    ("not-utf8", b'{"model": "llama", "prompt": "caf\xe9"}', 400, "the body is not valid UTF-8"),
    ("lone-surrogate", b'{"model": "llama", "messages": [{"role": "user", "content": "a\\ud800"}]}', 400,
     "messages[0].content is not valid Unicode: a lone surrogate \\ud800 at character 1"),
    ("surrogate-model", b'{"model": "\\udc00", "messages": []}', 400, '"model" is not valid Unicode'),
    ("not-an-object", b"[1, 2]", 400, "the body must be a JSON object"),
]


def test_hostile_bodies_are_4xx_and_the_server_stays_up(_server):
    _, url = _server
    for what, body, status, message in HOSTILE:
        r = httpx.post(url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == status, (what, r.text[:300])
        assert message in r.json()["error"]["message"] and len(r.json()["error"]["message"]) < 200, (what, r.json())
    r = httpx.post(url + "/v1/completions", content=b'{"model": "llama", "prompt": "hi"}', timeout=30,
                   headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(url + "/v1/nowhere", timeout=30).json()["error"]["message"] == "Not Found: GET /v1/nowhere"
    metrics = httpx.get(url + "/metrics", timeout=30).text
    assert 'status="500"' not in metrics


# -- concurrency -----------------------------------------------------------------------------------


def test_concurrent_streams_each_get_the_greedy_answer(lm):
    prompts = [[{"role": "user", "content": q}] for q in ("What is AI?", "How are you?", "Tell me a joke.", "Who wrote Hamlet?")]
    want = [greedy(lm.decoder, p) for p in prompts]
    assert len(set(want)) == 4  # a mixed-up answer would show
    with serving(lm) as (client, _, service):
        def client_run(k: int) -> list[bool]:
            return [streamed(client, model="llama", messages=prompts[k], temperature=0, max_tokens=NEW)[0] == want[k]
                    for _ in range(3)]

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(client_run, range(4)))
        assert results == [[True] * 3] * 4
        assert service.worker.pending == 0


def test_a_full_queue_answers_503_with_retry_after(tmp_path):
    release = threading.Event()
    tok = build_tokenizer()
    with serving(scripted(Scripted(tok("ok")["input_ids"], release), tmp_path), max_queue=1, max_texts=1) as (client, url, svc):
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.chat.completions.create, model="scripted", messages=ASK)
            deadline = time.monotonic() + 300  # a bound, not a wait
            while svc.worker.pending < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            r = httpx.post(url + "/v1/chat/completions", json={"model": "scripted", "messages": ASK}, timeout=30)
            release.set()
            assert first.result(300).choices[0].message.content == "ok"
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"] == {"message": "queue full (1 requests waiting or generating); retry later",
                                 "type": "server_error", "param": None, "code": "queue_full"}


# -- the command -----------------------------------------------------------------------------------


def test_slimtune_serve_a_causal_lm_folder_answers_the_openai_client_and_stops_on_sigterm(llama_dir, lm):
    exe = shutil.which("slimtune", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "slimtune.cli"]
    proc = subprocess.Popen([*cmd, "serve", str(llama_dir), "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        line, deadline = "", time.monotonic() + 600  # a bound for a hung start on a busy machine
        while "ready on" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stderr.readline()
        assert "ready on http://127.0.0.1:" in line and "OpenAI-compatible" in line, line
        url = line.split("ready on ")[1].split()[0]
        with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60) as client:
            assert [m.id for m in client.models.list().data] == ["llama"]
            r = client.chat.completions.create(model="llama", messages=ASK, temperature=0, max_tokens=NEW)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(300)
        rest = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert r.choices[0].message.content == greedy(lm.decoder, ASK)
    assert code == 0 and "slimtune serve: stopped" in rest and "Traceback" not in rest, rest


@pytest.mark.slow
def test_a_genai_export_is_served_through_the_same_decoder_interface(llama_dir, tmp_path):
    """genai-fp32 (ONNX Runtime GenAI): greedy as its decoder in-process; a seed reproduces a sample."""
    from slimtune.decoder.genai import export_genai

    folder = export_genai(llama_dir, "genai-fp32", tmp_path / "genai", tmp_path / "cache")
    loaded = load_lm(folder)
    assert loaded.decoder.kind == "genai" and loaded.decoder.max_positions == 256
    with serving(loaded) as (client, _, _):
        r = client.chat.completions.create(model="genai", messages=ASK, temperature=0, max_tokens=NEW)
        assert r.choices[0].message.content == greedy(loaded.decoder, ASK)
        assert streamed(client, model="genai", messages=ASK, temperature=0, max_tokens=NEW)[0] == r.choices[0].message.content
        first = client.chat.completions.create(model="genai", messages=ASK, seed=3, max_tokens=NEW).choices[0].message.content
        again = client.chat.completions.create(model="genai", messages=ASK, seed=3, max_tokens=NEW).choices[0].message.content
        assert first == again != r.choices[0].message.content
