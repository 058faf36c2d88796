"""A BERT whose layers may each keep a different number of attention heads and FFN neurons.

Structured pruning physically removes heads and neurons, so layer i ends up with `layer_heads[i]`
heads and `layer_intermediate[i]` FFN neurons. The stock `BertConfig` has one head count and one
FFN width for all layers (and transformers 5 dropped `pruned_heads` / `prune_heads`), so it cannot
describe such a model. This module defines `SlimtunePrunedBertConfig` (a BertConfig plus the two
per-layer lists) and a model class that builds BERT and then resizes each layer's projections.
Importing the module registers both with the Auto classes, so a pruned folder loads with

    import slimtune.pruned_bert  # noqa: F401  (registers model_type "slimtune_pruned_bert")
    AutoModelForSequenceClassification.from_pretrained("runs/prune/stages/02-prune")

Head size stays hidden_size / num_attention_heads of the original model; the forward pass is
BERT's own (it reshapes by head size, so fewer heads need no new code).
"""

from __future__ import annotations

import torch.nn as nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, BertConfig
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import (
    BertForSequenceClassification,
    BertModel,
    BertSelfAttention,
    eager_attention_forward,
)

MODEL_TYPE = "slimtune_pruned_bert"


class SlimtunePrunedBertConfig(BertConfig):
    model_type = MODEL_TYPE

    def __init__(self, layer_heads: list[int] | None = None, layer_intermediate: list[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        n = self.num_hidden_layers
        self.layer_heads = list(layer_heads) if layer_heads is not None else [self.num_attention_heads] * n
        self.layer_intermediate = list(layer_intermediate) if layer_intermediate is not None else [self.intermediate_size] * n
        if len(self.layer_heads) != n or len(self.layer_intermediate) != n:
            raise ValueError(f"layer_heads and layer_intermediate need {n} entries (num_hidden_layers)")
        if min(self.layer_heads, default=1) < 1 or min(self.layer_intermediate, default=1) < 1:
            raise ValueError("every layer keeps at least one head and one FFN neuron")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads


class PrunedSelfAttention(BertSelfAttention):
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

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):
        if past_key_values is not None:
            raise NotImplementedError("a pruned BERT is an encoder: no key/value cache")
        input_shape = hidden_states.shape[:-1]
        shape = (*input_shape, self.num_attention_heads, self.attention_head_size)
        q, k, v = (p(hidden_states).view(shape).transpose(1, 2) for p in (self.query, self.key, self.value))
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attend(self, q, k, v, attention_mask, dropout=self.dropout.p if self.training else 0.0,
                              scaling=self.scaling, **kwargs)
        return out.reshape(*input_shape, -1).contiguous(), weights


def resize_layers(encoder_layers, config: SlimtunePrunedBertConfig) -> None:
    """Replace each layer's projections by (untrained) ones of the config's per-layer sizes."""
    h = config.hidden_size
    for layer, heads, inter in zip(encoder_layers, config.layer_heads, config.layer_intermediate):
        layer.attention.self = PrunedSelfAttention(config, heads)
        layer.attention.output.dense = nn.Linear(heads * config.head_size, h)
        if layer.intermediate.dense.out_features != inter:
            layer.intermediate.dense = nn.Linear(h, inter)
            layer.output.dense = nn.Linear(inter, h)


class SlimtunePrunedBertModel(BertModel):
    config_class = SlimtunePrunedBertConfig

    def __init__(self, config, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        resize_layers(self.encoder.layer, config)
        self.post_init()


class SlimtunePrunedBertForSequenceClassification(BertForSequenceClassification):
    config_class = SlimtunePrunedBertConfig

    def __init__(self, config):
        super().__init__(config)
        resize_layers(self.bert.encoder.layer, config)
        self.post_init()


AutoConfig.register(MODEL_TYPE, SlimtunePrunedBertConfig, exist_ok=True)
AutoModel.register(SlimtunePrunedBertConfig, SlimtunePrunedBertModel, exist_ok=True)
AutoModelForSequenceClassification.register(SlimtunePrunedBertConfig, SlimtunePrunedBertForSequenceClassification, exist_ok=True)
