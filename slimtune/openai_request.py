"""OpenAI request bodies -> a checked `Request` for the generation worker (openai_service.py serves it).

Every field is checked against OpenAI's ranges before anything is queued, and a mistake is a
`BadRequest` naming the field (`param`): the server answers it in OpenAI's error shape. `null` is
read as "not given", as OpenAI reads it. Fields OpenAI defines that slimtune does not serve (`n` > 1,
logprobs, penalties) are accepted only at their neutral value; any other field is refused.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass

from .decoder.chat import PLAIN_ROLES, chat_prompt
from .decoder.measure import Sampling
from .service import ApiError, _check_unicode, _first_line

MAX_STOPS = 4  # stop strings per request, as OpenAI allows
# fields OpenAI defines that are accepted only at their neutral value (anything else is 400 unsupported)
NEUTRAL = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "logprobs": False, "echo": False, "best_of": 1}
COMMON = {"model", "max_tokens", "temperature", "top_p", "stop", "seed", "stream", "stream_options", "user", *NEUTRAL}
FIELDS = {"chat": COMMON | {"messages", "max_completion_tokens"}, "completion": COMMON | {"prompt"}}
EXAMPLE = {"chat": '{"model": "...", "messages": [{"role": "user", "content": "..."}]}',
           "completion": '{"model": "...", "prompt": "..."}'}


class BadRequest(ApiError):
    """A client error in OpenAI's shape: `param` names the field at fault."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(status, message)
        self.param, self.code = param, code


@dataclass
class Request:
    kind: str  # chat | completion
    ids: list[int]
    max_tokens: int
    sampling: Sampling
    stops: list[str]
    stream: bool
    include_usage: bool


class RequestChecker:
    """Checks requests for one served model; encodes prompts with a tokenizer of its own, one at a
    time (the worker thread decodes with the decoder's: a fast tokenizer shared by two threads can
    raise "Already borrowed")."""

    def __init__(self, tokenizer, name: str, model_id: str, max_positions: int, max_new_tokens: int):
        self._tokenizer, self._lock = copy.deepcopy(tokenizer), threading.Lock()
        self.name, self.model_id, self.max_positions, self.max_new_tokens = name, model_id, max_positions, max_new_tokens

    def known(self, model: str) -> bool:
        return model in (self.name, self.model_id)

    def parse(self, body, kind: str) -> Request:
        """The checked request, its prompt tokenized; a `BadRequest` naming the field otherwise."""
        if not isinstance(body, dict):
            raise BadRequest(f"the body must be a JSON object: {EXAMPLE[kind]}")
        body = {k: v for k, v in body.items() if v is not None}  # null is "not given", as OpenAI reads it
        for key in body:
            _check_unicode(key, "a field name", status=400)
        unknown = sorted(set(body) - FIELDS[kind])
        if unknown:
            raise BadRequest(f"unrecognized request argument: {unknown[0]!r}", unknown[0])
        for key, neutral in NEUTRAL.items():
            if key in body and body[key] != neutral:
                raise BadRequest(f"{key}={json.dumps(body[key])[:40]} is not supported (only {json.dumps(neutral)})", key)
        model = body.get("model")
        if not isinstance(model, str):
            raise BadRequest('"model" must be given as a string' if model is None else
                             f'"model" must be a string, not {_kind(model)}', "model")
        if not self.known(model):
            _check_unicode(model, '"model"', status=400)
            raise BadRequest(f"the model {model[:100]!r} does not exist; this server serves {self.name!r}",
                             "model", status=404, code="model_not_found")
        text = self._prompt_text(body, kind)
        with self._lock:
            ids = self._tokenizer(text, add_special_tokens=kind == "completion")["input_ids"]
        if not ids:
            raise BadRequest("the prompt is empty", "prompt" if kind == "completion" else "messages")
        room = self.max_positions - len(ids)
        if room < 1:
            raise BadRequest(f"the prompt has {len(ids)} tokens; this model reads at most "
                             f"{self.max_positions} positions, prompt and answer together",
                             "prompt" if kind == "completion" else "messages")
        key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        max_tokens = _integer(body, key, min(self.max_new_tokens, room))
        if max_tokens < 1:
            raise BadRequest(f"{key} must be at least 1, not {max_tokens}", key)
        if max_tokens > room:
            raise BadRequest(f"{key}={max_tokens} is too large: the prompt has {len(ids)} tokens and this model reads "
                             f"at most {self.max_positions} positions ({room} left for the answer)", key)
        if max_tokens > self.max_new_tokens:  # the server's own cap (slimtune serve --max-new-tokens)
            raise BadRequest(f"{key}={max_tokens} is above this server's limit of {self.max_new_tokens} tokens per answer "
                             "(slimtune serve --max-new-tokens)", key)
        temperature = _number(body, "temperature", 1.0)
        if not 0 <= temperature <= 2:
            raise BadRequest(f"temperature must be from 0 to 2, not {temperature}", "temperature")
        top_p = _number(body, "top_p", 1.0)
        if not 0 < top_p <= 1:
            raise BadRequest(f"top_p must be above 0 and at most 1, not {top_p}", "top_p")
        seed = _integer(body, "seed", None)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest(f'"stream" must be true or false, not {_kind(stream)}', "stream")
        options = body.get("stream_options", {})
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise BadRequest('"stream_options" must be {"include_usage": true|false}', "stream_options")
        return Request(kind, ids, max_tokens, Sampling(temperature, top_p, seed), _stops(body.get("stop", [])),
                       stream, stream and options.get("include_usage", False))

    def _prompt_text(self, body: dict, kind: str) -> str:
        if kind == "completion":
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:  # ["text"]: one prompt, as a list
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise BadRequest('"prompt" must be given as a string' if prompt is None else
                                 f'"prompt" must be a string (one prompt per request), not {_kind(prompt)}', "prompt")
            _check_unicode(prompt, '"prompt"', status=400)
            return prompt
        turns = body.get("messages")
        if not isinstance(turns, list) or not turns:
            raise BadRequest('"messages" must be a non-empty list of {"role": ..., "content": ...}'
                             if turns is not None else '"messages" must be given', "messages")
        chat = [_turn(t, i) for i, t in enumerate(turns)]
        try:
            return chat_prompt(self._tokenizer, chat)
        except Exception as e:  # the template's own rule (e.g. roles must alternate), raised by jinja
            raise BadRequest(f"the model's chat template refused these messages: {_first_line(e)[:200]}", "messages") from None


def _turn(turn, i: int) -> dict:
    where = f"messages[{i}]"
    if not isinstance(turn, dict):
        raise BadRequest(f'{where} must be an object {{"role": ..., "content": ...}}, not {_kind(turn)}', where)
    role = turn.get("role")
    role = "system" if role == "developer" else role  # OpenAI's newer name for the system turn
    if role not in PLAIN_ROLES:
        raise BadRequest(f"{where}.role must be one of {', '.join(PLAIN_ROLES)}, not {json.dumps(role)[:40]}", f"{where}.role")
    content = turn.get("content")
    if isinstance(content, list):  # content parts: only text ones
        bad = next((p for p in content if not (isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))), None)
        if bad is not None:
            raise BadRequest(f'{where}.content parts must be {{"type": "text", "text": "..."}} (text only)', f"{where}.content")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise BadRequest(f"{where}.content must be a string, not {_kind(content)}", f"{where}.content")
    _check_unicode(content, f"{where}.content", status=400)
    return {"role": role, "content": content}


def _stops(stop) -> list[str]:
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise BadRequest('"stop" must be a non-empty string or a list of them', "stop")
    if len(stops) > MAX_STOPS:
        raise BadRequest(f'"stop" holds {len(stops)} strings; at most {MAX_STOPS}', "stop")
    for i, s in enumerate(stops):
        _check_unicode(s, f'"stop"[{i}]', status=400)
    return stops


def _number(body: dict, key: str, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f'"{key}" must be a number, not {_kind(value)}', key)
    return float(value)


def _integer(body: dict, key: str, default):
    value = body.get(key, default)
    if value is default:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f'"{key}" must be an integer, not {_kind(value)}', key)
    return value


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
