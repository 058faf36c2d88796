"""SlimBERT: BERT with the shapes slimtune's methods produce, which the stock BertConfig cannot say.

- per-layer widths (structured pruning): block i keeps `layer_heads[i]` attention heads and
  `layer_intermediate[i]` FFN neurons (transformers 5 also dropped `pruned_heads`/`prune_heads`);
- shared layers (ALBERT-style, retrofitted): `num_hidden_layers` unique blocks run in the order
  `layer_order` (e.g. [0, 0, 1, 1, 2, 2]: six layers deep, three blocks stored once each);
- bottleneck adapters: `adapter: houlsby` (after the attention and the FFN output projections) or
  `pfeiffer` (after the FFN only), each x + up(gelu(down(x))) of width `adapter_size`.

Importing this module registers model_type "slimtune_bert" with the Auto classes, so a folder
slimtune wrote loads with

    import slimtune.model.slim_bert  # noqa: F401
    AutoModelForSequenceClassification.from_pretrained("runs/prune/stages/02-pruned")

Head size stays hidden_size / num_attention_heads of the original model. Everything else is
BERT's own code; what is written here is only what differs (why: no library has these shapes).
"""

from __future__ import annotations

import torch.nn as nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, BertConfig
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import (
    BertEncoder,
    BertForSequenceClassification,
    BertModel,
    BertSelfAttention,
    eager_attention_forward,
)

from .structure import ADAPTER_KINDS

MODEL_TYPE = "slimtune_bert"


class SlimBertConfig(BertConfig):
    model_type = MODEL_TYPE

    def __init__(self, layer_heads: list[int] | None = None, layer_intermediate: list[int] | None = None,
                 layer_order: list[int] | None = None, adapter: str | None = None, adapter_size: int = 64, **kwargs):
        super().__init__(**kwargs)
        n = self.num_hidden_layers  # unique blocks
        self.layer_heads = list(layer_heads) if layer_heads is not None else [self.num_attention_heads] * n
        self.layer_intermediate = list(layer_intermediate) if layer_intermediate is not None else [self.intermediate_size] * n
        self.layer_order = list(layer_order) if layer_order is not None else list(range(n))
        self.adapter, self.adapter_size = adapter, adapter_size
        if len(self.layer_heads) != n or len(self.layer_intermediate) != n:
            raise ValueError(f"layer_heads and layer_intermediate need {n} entries (num_hidden_layers)")
        if min(self.layer_heads, default=1) < 1 or min(self.layer_intermediate, default=1) < 1:
            raise ValueError("every layer keeps at least one head and one FFN neuron")
        if sorted(set(self.layer_order)) != list(range(n)):
            raise ValueError(f"layer_order must use every block 0..{n - 1}")
        if adapter is not None and (adapter not in ADAPTER_KINDS or adapter_size < 1):
            raise ValueError(f"adapter must be one of {', '.join(ADAPTER_KINDS)} with adapter_size >= 1")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads


class ExplicitHeadsSelfAttention(BertSelfAttention):
    """BERT self-attention (encoder only) with this layer's own head count.

    The stock module reshapes to (batch, seq, -1, head_size); the -1 hides the head count from
    the ONNX graph, and ONNX Runtime's attention fusion then falls back to one model-wide head
    count, which is wrong for a pruned layer and leaves the graph unfused (slower). Writing the
    head count into the reshape lets every layer fuse with its own."""

    def __init__(self, config, heads: int):
        super().__init__(config)
        width = heads * self.attention_head_size
        self.num_attention_heads, self.all_head_size = heads, width
        self.query, self.key, self.value = (nn.Linear(config.hidden_size, width) for _ in range(3))

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, cache=None, **kwargs):
        if past_key_values is not None or cache is not None:  # `cache` is its name from transformers 5.24
            raise NotImplementedError("a SlimBERT is an encoder: no key/value cache")
        input_shape = hidden_states.shape[:-1]
        shape = (*input_shape, self.num_attention_heads, self.attention_head_size)
        q, k, v = (p(hidden_states).view(shape).transpose(1, 2) for p in (self.query, self.key, self.value))
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attend(self, q, k, v, attention_mask, dropout=self.dropout.p if self.training else 0.0,
                              scaling=self.scaling, **kwargs)
        return out.reshape(*input_shape, -1).contiguous(), weights


class Adapter(nn.Module):
    """Bottleneck adapter (Houlsby et al. 2019): x + up(act(down(x))); up starts at zero, so a new
    adapter is the identity and training starts from the pretrained function."""

    def __init__(self, hidden: int, size: int, act: str):
        super().__init__()
        self.down, self.up, self.act = nn.Linear(hidden, size), nn.Linear(size, hidden), ACT2FN[act]
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return x + self.up(self.act(self.down(x)))


class _OutputWithAdapter(nn.Module):
    """BertSelfOutput / BertOutput with an adapter between the projection and the residual + LN."""

    def __init__(self, original: nn.Module, adapter: Adapter):
        super().__init__()
        self.dense, self.LayerNorm, self.dropout, self.adapter = original.dense, original.LayerNorm, original.dropout, adapter

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(self.adapter(self.dropout(self.dense(hidden_states))) + input_tensor)


class SharedEncoder(BertEncoder):
    """BertEncoder that runs its blocks in `config.layer_order` (a block may run more than once)."""

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                past_key_values=None, use_cache=None, **kwargs):
        for i in self.config.layer_order:
            hidden_states = self.layer[i](hidden_states, attention_mask, encoder_hidden_states,
                                          encoder_attention_mask=encoder_attention_mask, **kwargs)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=hidden_states)


def build_layers(bert: BertModel, config: SlimBertConfig) -> None:
    """Give each block its configured widths and adapters (fresh weights; loading fills them)."""
    h = config.hidden_size
    bert.encoder = SharedEncoder(config)
    for layer, heads, inter in zip(bert.encoder.layer, config.layer_heads, config.layer_intermediate):
        # every layer (pruned or not) writes its head count into the reshape, see ExplicitHeadsSelfAttention
        layer.attention.self = ExplicitHeadsSelfAttention(config, heads)
        if heads != config.num_attention_heads:
            layer.attention.output.dense = nn.Linear(heads * config.head_size, h)
        if inter != config.intermediate_size:
            layer.intermediate.dense = nn.Linear(h, inter)
            layer.output.dense = nn.Linear(inter, h)
        if config.adapter == "houlsby":
            layer.attention.output = _OutputWithAdapter(layer.attention.output, Adapter(h, config.adapter_size, config.hidden_act))
        if config.adapter in ADAPTER_KINDS:
            layer.output = _OutputWithAdapter(layer.output, Adapter(h, config.adapter_size, config.hidden_act))


class SlimBertModel(BertModel):
    config_class = SlimBertConfig

    def __init__(self, config, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        build_layers(self, config)
        self.post_init()


class SlimBertForSequenceClassification(BertForSequenceClassification):
    config_class = SlimBertConfig

    def __init__(self, config):
        super().__init__(config)
        build_layers(self.bert, config)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, Adapter):  # keep new adapters the identity
            nn.init.zeros_(module.up.weight)
            nn.init.zeros_(module.up.bias)


def slim_config(config, **changes) -> SlimBertConfig:
    """A SlimBertConfig from a BERT (or SlimBERT) config, with `changes` applied."""
    d = config.to_dict()
    for k in ("model_type", "architectures", "transformers_version"):
        d.pop(k, None)
    return SlimBertConfig(**(d | changes))


AutoConfig.register(MODEL_TYPE, SlimBertConfig, exist_ok=True)
AutoModel.register(SlimBertConfig, SlimBertModel, exist_ok=True)
AutoModelForSequenceClassification.register(SlimBertConfig, SlimBertForSequenceClassification, exist_ok=True)
