"""llama.cpp as a runtime: a GGUF file (a `gguf-*` export folder, or any `.gguf`) as a `Decoder`.

Text is tokenized by the HF tokenizer saved beside the GGUF (an export folder), or, for a bare
`.gguf`, by the tokenizer transformers rebuilds from the file; the ids go to llama.cpp as they are,
so the chat template and the response masking are the same as for torch and GenAI.

Generation evaluates the prompt, then one token at a time with llama.cpp's KV cache, taking the
argmax of the last position's logits (greedy, as TorchDecoder), or drawing from them with the torch
decoder's sampler when `slimtune serve` asks for a temperature. Perplexity needs the logits of
every position: a second context built with `logits_all=True` on first use (as GenAI's runs a
plain ONNX Runtime session), so timing runs never pay for logits they do not read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import SlimtuneError
from .measure import Decoder, Sampling, _sampler

N_CTX = 2048  # tokens of context (prompt + answer, or a scored sequence) at most


class LlamaCppDecoder(Decoder):
    kind = "llama.cpp"

    def __init__(self, file: str | Path, n_ctx: int = N_CTX):
        """`file`: the .gguf (lm.find_gguf finds it in an export folder)."""
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise SlimtuneError(f"{file}: running a GGUF needs llama.cpp: pip install 'slimtune[gguf]'") from None
        self.file = Path(file)
        self.tokenizer = _tokenizer(self.file)
        self.llm = self._open(n_ctx, logits_all=False)
        self.n_ctx = self.max_positions = self.llm.n_ctx()
        self._stop = self.eos_ids() | {self.llm.token_eos()}
        self._scorer = None

    def _open(self, n_ctx: int, logits_all: bool):
        from llama_cpp import Llama

        from .measure import _threads

        try:
            # as many threads as torch uses here, so torch, GenAI and llama.cpp rows compare like with like
            return Llama(model_path=str(self.file), n_ctx=n_ctx, logits_all=logits_all, n_threads=_threads(),
                         n_threads_batch=_threads(), verbose=False)
        except Exception as e:  # llama-cpp-python raises ValueError for a file llama.cpp refuses
            raise SlimtuneError(f"{self.file}: llama.cpp cannot load it: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None

    def _check_length(self, n: int) -> None:
        if n > self.n_ctx:
            raise SlimtuneError(f"{self.file}: {n} tokens exceed the llama.cpp context of {self.n_ctx}")

    def stream(self, ids: list[int], max_new_tokens: int, stop: bool = True, sampling: Sampling | None = None) -> Iterator[int]:
        import llama_cpp

        self._check_length(len(ids))
        llm = self.llm
        llm.reset()
        llm.eval(ids)
        n_vocab = llm.n_vocab()
        pick = _argmax if sampling is None or sampling.greedy else _torch_pick(_sampler(sampling))
        for _ in range(max_new_tokens):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
            nxt = pick(logits)
            yield nxt
            if (stop and nxt in self._stop) or llm.n_tokens >= self.n_ctx:
                return
            llm.eval([nxt])

    def logprobs(self, ids: list[int]) -> np.ndarray:
        self._check_length(len(ids))
        if self._scorer is None:
            self._scorer = self._open(self.n_ctx, logits_all=True)
        sc = self._scorer
        sc.reset()
        sc.eval(ids)
        logits = sc.scores[: len(ids) - 1].astype(np.float64)  # (T-1, V)
        z = logits - logits.max(-1, keepdims=True)
        lse = np.log(np.exp(z).sum(-1))
        return z[np.arange(len(ids) - 1), ids[1:]] - lse


def _argmax(logits: np.ndarray) -> int:
    return int(logits.argmax())


def _torch_pick(pick):
    """The torch decoder's sampler (measure._sampler: temperature, top_p, seed) over llama.cpp's logits, so
    a seeded request draws alike whichever runtime serves it."""
    import torch

    return lambda logits: pick(torch.from_numpy(np.array(logits, dtype=np.float32)))


def _tokenizer(file: Path):
    """The HF tokenizer saved beside `file` (a slimtune export), else the one transformers builds from the GGUF."""
    from ..model.folders import TOKENIZER_FILES, first_line, from_pretrained, load_tokenizer

    folder = file.parent
    if any((folder / f).is_file() for f in TOKENIZER_FILES):
        tokenizer = load_tokenizer(folder)
    else:
        from transformers import AutoTokenizer

        try:
            tokenizer = from_pretrained(AutoTokenizer, str(folder), gguf_file=file.name)
        except Exception as e:  # transformers' GGUF reader raises several kinds
            raise SlimtuneError(f"{file}: cannot read its tokenizer: {first_line(e)}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
