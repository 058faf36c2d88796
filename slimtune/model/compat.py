"""Shims between the versions of the libraries slimtune runs on, each with the reason it exists.

Keep each one narrow and tested (tests/test_peft.py runs prefix tuning on the installed versions),
and delete it when the upstream fix lands.
"""

from __future__ import annotations

import inspect


def expose_past_key_values(model) -> None:
    """Let peft's prefix tuning see that `model`'s backbone takes a key/value cache.

    transformers 5.24 renamed the encoder's `past_key_values` argument to `cache` (the old name is
    still accepted until 5.40 through its `deprecate_kwarg` shim). peft 0.21 decides whether a model
    supports prefix tuning by looking for the old name in the backbone's forward signature, so it
    refuses every BERT-family model with "Model does not support past key values". The call itself
    works: peft passes `past_key_values=`, which transformers maps to `cache`. So we add the old name
    to the signature peft inspects, and change nothing else. A no-op on transformers < 5.24.
    """
    from transformers import PreTrainedModel

    for child in model.children():
        if not isinstance(child, PreTrainedModel):
            continue
        sig = inspect.signature(child.forward)
        if "past_key_values" in sig.parameters or "cache" not in sig.parameters:
            continue
        params = list(sig.parameters.values())
        var_kw = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
        params = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
        params.append(inspect.Parameter("past_key_values", inspect.Parameter.KEYWORD_ONLY, default=None))
        forward = child.forward  # the bound method; an instance attribute shadows it for nn.Module.__call__

        def forward_with_old_name(*args, _forward=forward, **kwargs):
            return _forward(*args, **kwargs)

        forward_with_old_name.__signature__ = sig.replace(parameters=params + var_kw)
        child.forward = forward_with_old_name
