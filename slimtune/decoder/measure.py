"""What a generative artifact is measured by, the same way for torch and ONNX Runtime GenAI.

- perplexity: exp(mean negative log-likelihood of the response tokens) over the held-out pairs,
  the prompt given (labels -100 on it, chat.py); summed over every response token, not averaged
  per example, so long answers weigh by their length;
- token_f1 / exact_match: greedy answers against the references, SQuAD-style (lower case, no
  punctuation or articles, whitespace tokens; as MLQA's evaluation does, each Chinese or Japanese
  character is a token and Unicode punctuation such as `，。？` goes too); a prompt with several reference answers in the
  test split counts its best match, and is generated once;
- ttft_ms / prefill_tokens_per_s / decode_tokens_per_s at batch 1: time from the prompt to the
  first token (prefill), prompt tokens per second of it, and new tokens per second after it
  (decode with the KV cache), median over prompts; `decode_block` gives the per-token times an
  alternated decode speed-up against the baseline is taken from.

A `Decoder` is one small interface over a torch causal LM and a GenAI folder: stream token ids
after a prompt (greedy, or sampled when given a `Sampling` with a temperature above 0: what
`slimtune serve` uses), and score a sequence. The greedy loop is written out (rather than
`model.generate`) because the time to the first token and the time per later token are what is
measured, and `generate()` reports neither.
"""

from __future__ import annotations

import re
import string
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .chat import IGNORE, encode_pair, prompt_ids
from .data import PairSet


@dataclass(frozen=True)
class Sampling:
    """How the next token is drawn. temperature 0 is greedy (argmax: the measured path, exactly);
    above 0, softmax(logits / temperature), cut to the smallest set of tokens whose probability
    reaches `top_p` (nucleus), drawn with a generator seeded by `seed` (None: a fresh random seed)."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Decoder:
    kind = "?"
    tokenizer = None
    max_positions: int = 1 << 30  # prompt + new tokens, at most (the model's position table)

    def stream(self, ids: list[int], max_new_tokens: int, stop: bool = True, sampling: Sampling | None = None) -> Iterator[int]:
        """Token ids after `ids`, greedy unless `sampling` says otherwise, stopping at an
        end-of-sequence id (unless `stop` is False: timing runs generate exactly `max_new_tokens`)."""
        raise NotImplementedError

    def stop_ids(self) -> set[int]:
        """The ids `stream` ends at (its last id is one of them when the model ended the answer)."""
        return self._stop

    def logprobs(self, ids: list[int]) -> np.ndarray:
        """(len(ids) - 1,) log p(ids[t] | ids[:t]) for t >= 1."""
        raise NotImplementedError

    def eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        for name in ("<|im_end|>", "<|endoftext|>"):
            tid = self.tokenizer.convert_tokens_to_ids(name) if name in self.tokenizer.get_vocab() else None
            ids.add(tid)
        return {i for i in ids if i is not None}


class TorchDecoder(Decoder):
    kind = "torch"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer
        stop = getattr(model.generation_config, "eos_token_id", None)
        self._stop = self.eos_ids() | set(stop if isinstance(stop, list) else [stop] if stop is not None else [])
        self.max_positions = int(getattr(model.config, "max_position_embeddings", None) or 1 << 30)

    def stream(self, ids: list[int], max_new_tokens: int, stop: bool = True, sampling: Sampling | None = None) -> Iterator[int]:
        import torch

        import inspect

        # transformers 5.24 renamed the KV-cache argument and output `past_key_values` -> `cache`
        key = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        pick = _greedy if sampling is None or sampling.greedy else _sampler(sampling)
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids]), use_cache=True)
            for _ in range(max_new_tokens):
                nxt = pick(out.logits[0, -1])
                yield nxt
                if stop and nxt in self._stop:
                    return
                out = self.model(input_ids=torch.tensor([[nxt]]), use_cache=True, **{key: getattr(out, key)})

    def logprobs(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        return lp.numpy()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _greedy(logits) -> int:
    return int(logits.argmax())


def _sampler(sampling: Sampling):
    """next-token logits (V,) -> a sampled id, from a generator of its own: a request's seed fixes
    its answer whatever else the process draws."""
    import torch

    gen = torch.Generator()
    if sampling.seed is None:
        gen.seed()
    else:
        gen.manual_seed(sampling.seed % (1 << 64))  # any int (OpenAI's seed is signed 64-bit)

    def pick(logits) -> int:
        probs = torch.softmax(logits.float() / sampling.temperature, -1)
        if sampling.top_p < 1:
            # nucleus: the most probable tokens until their mass reaches top_p (the first always kept)
            p, order = probs.sort(descending=True)
            keep = (p.cumsum(0) - p) < sampling.top_p
            probs = torch.zeros_like(probs).scatter_(0, order[keep], p[keep])
        return int(torch.multinomial(probs, 1, generator=gen))

    return pick


def response_perplexity(dec: Decoder, data: PairSet, system: str | None, max_length: int | None = None) -> dict:
    """exp(total NLL / total response tokens) over `data` (see chat.encode_pair for what counts)."""
    nll, tokens = 0.0, 0
    for p, r in zip(data.prompts, data.responses):
        enc = encode_pair(dec.tokenizer, p, r, system, max_length)
        mask = np.array(enc.labels[1:]) != IGNORE  # label t is predicted from the tokens before it
        if not mask.any():
            continue
        nll -= float(dec.logprobs(enc.input_ids)[mask].sum())
        tokens += int(mask.sum())
    return {"perplexity": float(np.exp(nll / tokens)) if tokens else float("nan"), "nll": nll, "response_tokens": tokens}


PUNCTUATION = set(string.punctuation)
CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])")  # kana, CJK ideographs: no spaces between words


def _normalize(text: str) -> list[str]:
    text = "".join(c for c in text.lower() if c not in PUNCTUATION and not unicodedata.category(c).startswith("P"))
    text = CJK.sub(r" \1 ", text)
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = _normalize(prediction), _normalize(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    return float(_normalize(prediction) == _normalize(reference))


def answer(dec: Decoder, prompt: str, system: str | None, max_new_tokens: int) -> tuple[str, list[int]]:
    ids = list(dec.stream(prompt_ids(dec.tokenizer, prompt, system), max_new_tokens))
    return dec.tokenizer.decode(ids, skip_special_tokens=True).strip(), ids


def answer_quality(dec: Decoder, data: PairSet, system: str | None, max_prompts: int, max_new_tokens: int,
                   samples: int = 5) -> dict:
    """Greedy answers to the first `max_prompts` distinct test prompts; F1 / EM against their best reference."""
    refs: dict[str, list[str]] = {}
    for p, r in zip(data.prompts, data.responses):
        refs.setdefault(p, []).append(r)
    prompts = list(refs)[:max_prompts]
    f1s, ems, shown, token_ids = [], [], [], {}
    for p in prompts:
        text, ids = answer(dec, p, system, max_new_tokens)
        token_ids[p] = ids
        f1s.append(max(token_f1(text, r) for r in refs[p]))
        ems.append(max(exact_match(text, r) for r in refs[p]))
        if len(shown) < samples:
            shown.append({"prompt": p, "answer": text, "reference": refs[p][0]})
    return {"token_f1": float(np.mean(f1s)) if f1s else float("nan"), "exact_match": float(np.mean(ems)) if ems else float("nan"),
            "answered_prompts": len(prompts), "max_new_tokens": max_new_tokens, "samples": shown, "_greedy_ids": token_ids}


def generation_speed(dec: Decoder, prompts: list[str], system: str | None, new_tokens: int, warmup: int = 1) -> dict:
    """Batch-1 time to first token, prefill tokens/s (prompt tokens / TTFT) and decode tokens/s
    (after the first), median over `prompts`."""
    import os

    ttft, prefill, rate = [], [], []
    for i, p in enumerate([*prompts[:warmup], *prompts]):
        ids = prompt_ids(dec.tokenizer, p, system)
        first, times = _timed_stream(dec, ids, new_tokens)
        if i < warmup or first is None:
            continue
        ttft.append(first * 1000)
        prefill.append(len(ids) / first)
        if len(times) > 1:
            rate.append((len(times) - 1) / (times[-1] - times[0]))
    return {"ttft_ms": float(np.median(ttft)), "prefill_tokens_per_s": float(np.median(prefill)),
            "decode_tokens_per_s": float(np.median(rate)) if rate else float("nan"),
            "speed_prompts": len(ttft), "speed_new_tokens": new_tokens, "load_avg_1m": float(os.getloadavg()[0]),
            "threads": _threads()}


def _timed_stream(dec: Decoder, ids: list[int], new_tokens: int) -> tuple[float | None, list[float]]:
    """(seconds to the first token, the clock at each token since the start) of one greedy run of `new_tokens`."""
    start = time.perf_counter()
    times = [time.perf_counter() - start for _ in dec.stream(ids, new_tokens, stop=False)]
    return (times[0] if times else None), times


def decode_block(dec: Decoder, ids: list[int], new_tokens: int) -> list[float]:
    """Seconds per decoded token (after the first) of one greedy run: one block of an alternated
    decode speed-up (measure/alternate.py)."""
    _, times = _timed_stream(dec, ids, new_tokens)
    return [b - a for a, b in zip(times, times[1:])]


def _threads() -> int:
    import torch

    return torch.get_num_threads()  # GenAI sessions are given the same count (genai.py)


def first_token_agreement(source: dict[str, list[int]], other: dict[str, list[int]], n: int) -> dict:
    """Parity of greedy decoding: how many prompts have the same first `n` tokens, and the
    average length of the common prefix."""
    same, prefix = 0, []
    for p, ids in source.items():
        got = other.get(p, [])
        a, b = ids[:n], got[:n]
        same += a == b
        k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        prefix.append(k)
    return {"greedy_identical": same, "greedy_prompts": len(source), "greedy_tokens": n,
            "greedy_common_prefix_mean": float(np.mean(prefix)) if prefix else float("nan")}
