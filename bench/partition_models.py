"""The architectures the broad partitioning benchmark and the property tests partition.

Small configs of transformers models (random weights, built from configs, nothing downloaded),
chosen to cover what people train today rather than what is easy to cut: decoder LMs with
RMSNorm, rotary embeddings, grouped-query attention and gated MLPs (Llama, Mistral with a sliding
window, Qwen2 with q/k/v biases, Gemma with multi-query attention and GeGLU), parallel-residual
decoders (Phi, GPT-NeoX), GPT-2, two encoders (BERT, DistilBERT), an encoder-decoder (T5, with
its relative position bias), vision transformers with windowed (Swin) and distilled (DeiT)
attention next to ViT, conv nets with depthwise (ConvNeXt, MobileNetV2, EfficientNet), grouped
(RegNet) and plain (ResNet) convolutions, and two mixtures of experts (Mixtral, OLMoE).

Sizes: hidden 256 and 4 layers for the token models at 128 tokens (the FFN holds most of a
layer's FLOPs, as in real LMs), 128x128 images for the vision models (224 for Swin, whose
windows need it). The mixtures of experts run their experts as batched matmuls
(``experts_implementation="batched_mm"``): transformers' default grouped-matmul path is a custom
op the cost model gives no FLOPs, which would leave the experts weightless. Each builder
returns ``(model, example_inputs, hidden_bytes)``; ``hidden_bytes`` is one hidden state of the
residual stream (tokens x hidden x 4 bytes), ``None`` for the vision models.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Case", "CASES", "QUICK", "build"]

SEQ = 128
IMAGE = 128
_DECODER = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                num_attention_heads=8, num_key_value_heads=2, head_dim=32, vocab_size=1000,
                max_position_embeddings=256)


@dataclass(frozen=True)
class Case:
    """One architecture: the transformers class, its config fields and what it stands for."""

    cls: str
    config: dict = field(default_factory=dict)
    about: str = ""
    inputs: str = "tokens"          # tokens | pixels | encdec
    image_size: int = IMAGE


CASES: dict[str, Case] = {
    "gpt2": Case("GPT2LMHeadModel", dict(n_layer=4, n_embd=256, n_head=8, vocab_size=1000,
                                         n_positions=256), "decoder LM, LayerNorm, learned positions"),
    "llama": Case("LlamaForCausalLM", _DECODER, "RMSNorm, RoPE, GQA 8/2, SwiGLU"),
    "mistral": Case("MistralForCausalLM", dict(_DECODER, sliding_window=64),
                    "as Llama, sliding-window attention (64)"),
    "qwen2": Case("Qwen2ForCausalLM", _DECODER, "as Llama, q/k/v biases"),
    "gemma": Case("GemmaForCausalLM", dict(_DECODER, num_key_value_heads=1),
                  "RMSNorm, RoPE, multi-query attention, GeGLU, tied head"),
    "phi": Case("PhiForCausalLM", dict(hidden_size=256, intermediate_size=1024,
                                       num_hidden_layers=4, num_attention_heads=8,
                                       num_key_value_heads=8, vocab_size=1000),
                "parallel residual, partial rotary, LayerNorm"),
    "neox": Case("GPTNeoXForCausalLM", dict(hidden_size=256, intermediate_size=1024,
                                            num_hidden_layers=4, num_attention_heads=8,
                                            vocab_size=1000, use_parallel_residual=True),
                 "parallel residual, rotary on 25% of each head"),
    "bert": Case("BertModel", dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=8,
                                   intermediate_size=1024, vocab_size=1000),
                 "encoder, post-LayerNorm"),
    "distilbert": Case("DistilBertModel", dict(n_layers=4, dim=256, n_heads=8, hidden_dim=1024,
                                               vocab_size=1000), "distilled encoder"),
    "t5": Case("T5Model", dict(d_model=256, d_kv=32, d_ff=1024, num_layers=3,
                               num_decoder_layers=3, num_heads=8, vocab_size=1000),
               "encoder-decoder, relative position bias, cross-attention", inputs="encdec"),
    "vit": Case("ViTModel", dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=8,
                                 intermediate_size=1024, patch_size=16), "vision transformer",
                inputs="pixels"),
    "deit": Case("DeiTModel", dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=8,
                                   intermediate_size=1024, patch_size=16),
                 "distilled ViT (class + distillation tokens)", inputs="pixels"),
    "swin": Case("SwinModel", dict(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[2, 4, 8, 8]),
                 "windowed attention, shifted windows, patch merging", inputs="pixels",
                 image_size=224),
    "resnet": Case("ResNetModel", dict(embedding_size=32, hidden_sizes=[64, 128, 256, 512],
                                       depths=[2, 2, 2, 2], layer_type="basic"),
                   "ResNet-18 blocks, plain convolutions, BatchNorm", inputs="pixels"),
    "convnext": Case("ConvNextModel", dict(hidden_sizes=[32, 64, 128, 256], depths=[2, 2, 2, 2]),
                     "depthwise 7x7 convolutions, LayerNorm", inputs="pixels"),
    "regnet": Case("RegNetModel", dict(hidden_sizes=[32, 64, 128, 256], depths=[1, 2, 2, 1],
                                       groups_width=16), "grouped convolutions, squeeze-excite",
                   inputs="pixels"),
    "mobilenetv2": Case("MobileNetV2Model", dict(depth_multiplier=0.5),
                        "inverted residuals, depthwise convolutions", inputs="pixels"),
    "efficientnet": Case("EfficientNetModel", dict(width_coefficient=1.0, depth_coefficient=1.0,
                                                   hidden_dim=1280),
                         "depthwise convolutions, squeeze-excite (B0 widths)", inputs="pixels"),
    "mixtral": Case("MixtralForCausalLM", dict(_DECODER, intermediate_size=344,
                                               num_local_experts=4, num_experts_per_tok=2,
                                               experts_implementation="batched_mm"),
                    "mixture of experts, 4 experts top-2"),
    "olmoe": Case("OlmoeForCausalLM", dict(_DECODER, num_key_value_heads=8, intermediate_size=256,
                                           num_experts=8, num_experts_per_tok=2,
                                           experts_implementation="batched_mm"),
                  "mixture of experts, 8 experts top-2, q/k norms"),
}

# a 4-model subset for --quick: a decoder LM, a parallel-residual decoder, windowed attention, MoE
QUICK = ("llama", "phi", "swin", "mixtral")


class _EncoderDecoder(torch.nn.Module):
    """An encoder-decoder called with token ids for both sides, returning the decoder states."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, decoder_input_ids):
        return self.model(input_ids=input_ids,
                          decoder_input_ids=decoder_input_ids).last_hidden_state


def _hidden_width(config) -> int | None:
    for key in ("hidden_size", "n_embd", "d_model", "dim"):
        v = getattr(config, key, None)
        if isinstance(v, int):
            return v
    return None


# ``tiny``: the same architectures at test size (2 layers, one block per stage, 32 tokens)
_TINY = {"num_hidden_layers": 2, "n_layer": 2, "n_layers": 2, "num_layers": 2,
         "num_decoder_layers": 2}


def _tiny(fields: dict) -> dict:
    out = {k: (_TINY[k] if k in _TINY else v) for k, v in fields.items()}
    if "depths" in out:
        out["depths"] = [1] * len(out["depths"])
    return out


def build(name: str, seed: int = 0, tiny: bool = False):
    """``(model, example_inputs, hidden_bytes)`` for ``CASES[name]``, random weights;
    ``tiny``: fewer layers (one block per stage), 32 tokens, 64x64 images (Swin keeps 224:
    its 7x7 windows must tile every stage)."""
    import transformers
    case = CASES[name]
    cls = getattr(transformers, case.cls)
    fields = _tiny(case.config) if tiny else dict(case.config)
    seq = 32 if tiny else SEQ
    image = case.image_size if not tiny or case.image_size > IMAGE else 64
    if case.inputs == "pixels":
        fields["image_size"] = image
    config = cls.config_class(**fields)
    if hasattr(config, "use_cache"):
        config.use_cache = False
    torch.manual_seed(seed)
    model = cls(config).eval()
    gen = torch.Generator().manual_seed(seed)
    if case.inputs == "pixels":
        x = torch.randn(1, int(getattr(config, "num_channels", 3)), image, image, generator=gen)
        return model, (x,), None
    vocab = int(config.vocab_size)
    ids = torch.randint(0, vocab, (1, seq), generator=gen)
    width = _hidden_width(config)
    hidden = seq * width * 4 if width else None
    if case.inputs == "encdec":
        return _EncoderDecoder(model).eval(), (ids, torch.randint(0, vocab, (1, seq),
                                                                  generator=gen)), hidden
    return model, (ids,), hidden
