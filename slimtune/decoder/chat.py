"""Chat-template formatting and response-only labels.

An example is the prompt as the model sees it at generation time (the chat template with the
assistant turn opened: `add_generation_prompt=True`) followed by the completion: the response
and the template's end-of-turn marker (e.g. `<|im_end|>`, so the model learns to stop). Trailing
whitespace the template puts after the marker is not part of it. Prompt and completion are
tokenized separately and concatenated: that is exactly the sequence of ids the model meets when
it generates after the prompt (tokenizing the joined text could merge tokens across the seam).

A base model without a chat template (gemma3-270m) gets one plain template everywhere, training,
perplexity, greedy answers and serving alike (`chat_prompt`): `User: ...\nAssistant:` as the prompt,
` response<eos>` as the completion, so the model learns to stop where serving stops it.

Labels are -100 on every prompt token, so the loss and the perplexity count response tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass


IGNORE = -100  # the label PyTorch's cross-entropy skips


def messages(prompt: str, system: str | None = None, response: str | None = None) -> list[dict]:
    out = [{"role": "system", "content": system}] if system else []
    out.append({"role": "user", "content": prompt})
    if response is not None:
        out.append({"role": "assistant", "content": response})
    return out


def prompt_text(tokenizer, prompt: str, system: str | None = None) -> str:
    """The prompt as text, the assistant turn opened (what generation continues)."""
    return chat_prompt(tokenizer, messages(prompt, system))


PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer, turns: list[dict]) -> str:
    """A conversation (`{"role", "content"}` turns) as the prompt text generation continues: the
    model's chat template with the assistant turn opened or, for a base model without one, the
    plain template `System: ...\n\nUser: ...\nAssistant: ...\nUser: ...\nAssistant:` (after the
    tokenizer's BOS when it starts its encodings with one: see `bos_text`)."""
    if has_template(tokenizer):
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    lines = [f"{PLAIN_ROLES[t['role']]}: {t['content']}" for t in turns]
    if turns and turns[0]["role"] == "system":
        lines[0] += "\n"
    return bos_text(tokenizer) + "\n".join([*lines, "Assistant:"])


def bos_text(tokenizer) -> str:
    """The tokenizer's BOS token as text when its own encodings start with it (Gemma, Llama), else "".
    Prompts are tokenized without special tokens, because a chat template writes them itself; the
    plain template has to write the BOS too (Gemma without its `<bos>` answers with nonsense)."""
    bos, bos_id = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "bos_token_id", None)
    if not bos or bos_id is None:
        return ""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos_id else ""


def completion_text(tokenizer, prompt: str, response: str, system: str | None = None) -> str:
    """The response and the template's end-of-turn marker, as the template writes them; with the
    plain template, ` response` and the EOS token (a space after `Assistant:`, as in earlier turns)."""
    if not has_template(tokenizer):
        return f" {response}{tokenizer.eos_token or ''}"
    head = prompt_text(tokenizer, prompt, system)
    full = tokenizer.apply_chat_template(messages(prompt, system, response), tokenize=False)
    if not full.startswith(head):  # a template that rewrites earlier turns: fall back to response + eos
        return response + (tokenizer.eos_token or "")
    return full[len(head):].rstrip()


def prompt_ids(tokenizer, prompt: str, system: str | None = None) -> list[int]:
    return tokenizer(prompt_text(tokenizer, prompt, system), add_special_tokens=False)["input_ids"]


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def response_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def encode_pair(tokenizer, prompt: str, response: str, system: str | None = None, max_length: int | None = None) -> Encoded:
    """input_ids = prompt ids + completion ids (cut at `max_length`); labels -100 on the prompt."""
    head = prompt_ids(tokenizer, prompt, system)
    tail = tokenizer(completion_text(tokenizer, prompt, response, system), add_special_tokens=False)["input_ids"]
    ids = head + tail
    labels = [IGNORE] * len(head) + tail
    if max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    return Encoded(ids, labels)


class PairDataset:
    """Tokenized prompt/response examples for the Trainer; pairs whose response falls entirely past
    `max_length` are left out (they would add no loss) and counted in `dropped`."""

    def __init__(self, tokenizer, prompts: list[str], responses: list[str], system: str | None, max_length: int | None):
        self.rows, self.dropped = [], 0
        for p, r in zip(prompts, responses):
            enc = encode_pair(tokenizer, p, r, system, max_length)
            if enc.response_tokens == 0:
                self.dropped += 1
                continue
            self.rows.append({"input_ids": enc.input_ids, "attention_mask": [1] * len(enc.input_ids), "labels": enc.labels})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]

    @property
    def response_tokens(self) -> int:
        return sum(sum(1 for t in r["labels"] if t != IGNORE) for r in self.rows)


def collate(pad_id: int):
    """Right-pad a batch: input_ids with `pad_id`, attention_mask with 0, labels with -100."""

    def fn(rows: list[dict]) -> dict:
        import torch

        width = max(len(r["input_ids"]) for r in rows)

        def pad(key: str, value: int):
            return torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows], dtype=torch.long)

        return {"input_ids": pad("input_ids", pad_id), "attention_mask": pad("attention_mask", 0), "labels": pad("labels", IGNORE)}

    return fn
