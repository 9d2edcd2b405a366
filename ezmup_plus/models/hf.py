"""Hugging Face models from small configs with a ``width`` and ``depth`` argument (nothing is downloaded)."""

from __future__ import annotations

from torch import nn


def gpt2(width: int, depth: int = 2, vocab_size: int = 65, n_positions: int = 64, n_head: int = 4) -> nn.Module:
    """GPT-2: Conv1D projections stored (in, out), tied embedding and readout, 4w MLP."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_embd=width, n_layer=depth, n_head=n_head, vocab_size=vocab_size,
                                      n_positions=n_positions, bos_token_id=0, eos_token_id=0))


def llama(width: int, depth: int = 2, vocab_size: int = 65, max_position_embeddings: int = 64, n_head: int = 4,
          n_kv_head: int = 2) -> nn.Module:
    """Llama: RMSNorm, SwiGLU (intermediate size 3w: Llama's rounded 8w/3 is no polynomial in w), grouped-query attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(hidden_size=width, intermediate_size=3 * width, num_hidden_layers=depth,
                                        num_attention_heads=n_head, num_key_value_heads=n_kv_head,
                                        vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
                                        bos_token_id=0, eos_token_id=0, pad_token_id=0))


def opt(width: int, depth: int = 2, vocab_size: int = 65, max_position_embeddings: int = 64,
        n_head: int = 4) -> nn.Module:
    """OPT: tied readout, learned positions, queries multiplied by 1/sqrt(d) before a kernel given scale 1."""
    from transformers import OPTConfig, OPTForCausalLM

    return OPTForCausalLM(OPTConfig(hidden_size=width, ffn_dim=4 * width, num_hidden_layers=depth,
                                    num_attention_heads=n_head, word_embed_proj_dim=width, vocab_size=vocab_size,
                                    max_position_embeddings=max_position_embeddings, pad_token_id=1, bos_token_id=0,
                                    eos_token_id=0))


def bert(width: int, depth: int = 2, vocab_size: int = 65, max_position_embeddings: int = 64, n_head: int = 4) -> nn.Module:
    """BERT encoder: post-LN blocks, token-type embeddings, 4w intermediate."""
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=n_head,
                                intermediate_size=4 * width, vocab_size=vocab_size,
                                max_position_embeddings=max_position_embeddings), add_pooling_layer=False)


def vit(width: int, depth: int = 2, image_size: int = 16, patch_size: int = 4, num_labels: int = 10,
        n_head: int = 4) -> nn.Module:
    """A small ViT classifier (patch-embedding convolution, pre-LN blocks, classification head)."""
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=n_head,
                                               intermediate_size=4 * width, image_size=image_size,
                                               patch_size=patch_size, num_labels=num_labels))


def falcon(width: int, depth: int = 2, vocab_size: int = 65, n_head: int = 4) -> nn.Module:
    """Falcon: multi-query attention from one fused projection of heads + 2 head dims, parallel blocks."""
    from transformers import FalconConfig, FalconForCausalLM

    return FalconForCausalLM(FalconConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=n_head,
                                          ffn_hidden_size=4 * width, vocab_size=vocab_size, bos_token_id=0,
                                          eos_token_id=0, pad_token_id=0))


def bloom(width: int, depth: int = 2, vocab_size: int = 65, n_head: int = 4) -> nn.Module:
    """Bloom: a fused QKV interleaved per head, scores from ``baddbmm`` with ALiBi, tied readout."""
    from transformers import BloomConfig, BloomForCausalLM

    return BloomForCausalLM(BloomConfig(hidden_size=width, n_layer=depth, n_head=n_head, vocab_size=vocab_size,
                                        bos_token_id=0, eos_token_id=0, pad_token_id=0))


MOE = dict(vocab_size=65, max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0,
           num_attention_heads=4, num_key_value_heads=2)


def mixtral(width: int, depth: int = 2, experts: int = 4, **config) -> nn.Module:
    """Mixtral: every MLP a top-2 mixture of SwiGLU experts stored as (experts, out, in) tensors."""
    from transformers import MixtralConfig, MixtralForCausalLM

    return MixtralForCausalLM(MixtralConfig(**{**MOE, **dict(
        hidden_size=width, intermediate_size=2 * width, num_hidden_layers=depth, head_dim=width // 4,
        num_local_experts=experts, num_experts_per_tok=2, sliding_window=None), **config}))


def qwen2_moe(width: int, depth: int = 2, experts: int = 4, **config) -> nn.Module:
    """Qwen2-MoE: routed experts plus a shared expert behind its own sigmoid gate."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    return Qwen2MoeForCausalLM(Qwen2MoeConfig(**{**MOE, **dict(
        hidden_size=width, intermediate_size=2 * width, moe_intermediate_size=width,
        shared_expert_intermediate_size=2 * width, num_hidden_layers=depth, num_experts=experts,
        num_experts_per_tok=2, decoder_sparse_step=1), **config}))


def qwen3_moe(width: int, depth: int = 2, experts: int = 4, **config) -> nn.Module:
    """Qwen3-MoE: routed experts only, norms on the queries and keys."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    return Qwen3MoeForCausalLM(Qwen3MoeConfig(**{**MOE, **dict(
        hidden_size=width, intermediate_size=2 * width, moe_intermediate_size=width, num_hidden_layers=depth,
        head_dim=width // 4, num_experts=experts, num_experts_per_tok=2, decoder_sparse_step=1), **config}))


def olmoe(width: int, depth: int = 2, experts: int = 4, **config) -> nn.Module:
    """OLMoE: top-2 of small experts, norms on the query and key projections."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    return OlmoeForCausalLM(OlmoeConfig(**{**MOE, **dict(
        hidden_size=width, intermediate_size=width, num_hidden_layers=depth, num_experts=experts,
        num_experts_per_tok=2), **config}))


def deepseek_v3(width: int, depth: int = 2, experts: int = 4, **config) -> nn.Module:
    """DeepSeek-V3: multi-head latent attention (low-rank queries and keys, a rotary part of fixed size), routed
    plus shared experts, every layer a mixture (``first_k_dense_replace=0``: the blocks repeat identically)."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    return DeepseekV3ForCausalLM(DeepseekV3Config(**{**MOE, **dict(
        hidden_size=width, intermediate_size=2 * width, moe_intermediate_size=width, num_hidden_layers=depth,
        num_key_value_heads=4, q_lora_rank=width // 2, kv_lora_rank=width // 4, qk_nope_head_dim=width // 4,
        qk_rope_head_dim=4, v_head_dim=width // 4, n_routed_experts=experts, n_shared_experts=1,
        num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=0), **config}))
