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
