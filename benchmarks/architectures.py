"""Which Hugging Face architectures ezmup_plus plans untouched: a survey on small configs, nothing downloaded.

Each is wrapped at base width 32 (4 heads), planned, built and given one AdamW step at width 128. The
table says how attention logits were rescaled (through the `scaling` attribute, folded into the query
projection, or a hook on the query rows), which warnings were raised, or the error that stopped it.
    python benchmarks/architectures.py [NAME ...]      (writes docs/results/architectures.json)
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402

import ezmup_plus as ezp  # noqa: E402

V, P, H, KV = 65, 64, 4, 2  # vocabulary, positions, heads, key-value heads
LM = dict(vocab_size=V, max_position_embeddings=P, bos_token_id=0, eos_token_id=0, pad_token_id=0)
DECODER = dict(num_attention_heads=H, num_key_value_heads=KV)

# name -> (model class, config class, config(width, depth), inputs, wrap options)
ARCHITECTURES = {
    "GPT-NeoX": ("GPTNeoXForCausalLM", "GPTNeoXConfig", lambda w, d: dict(
        hidden_size=w, num_hidden_layers=d, num_attention_heads=H, intermediate_size=4 * w, **LM), "tokens", {}),
    "Mistral": ("MistralForCausalLM", "MistralConfig", lambda w, d: dict(
        hidden_size=w, intermediate_size=3 * w, num_hidden_layers=d, head_dim=w // H, sliding_window=None,
        **DECODER, **LM), "tokens", {}),
    "Qwen2": ("Qwen2ForCausalLM", "Qwen2Config", lambda w, d: dict(
        hidden_size=w, intermediate_size=3 * w, num_hidden_layers=d, **DECODER, **LM), "tokens", {}),
    "OPT": ("OPTForCausalLM", "OPTConfig", lambda w, d: dict(
        hidden_size=w, ffn_dim=4 * w, num_hidden_layers=d, num_attention_heads=H, word_embed_proj_dim=w,
        **{**LM, "pad_token_id": 1}), "tokens", {}),
    "GPT-J": ("GPTJForCausalLM", "GPTJConfig", lambda w, d: dict(
        n_embd=w, n_layer=d, n_head=H, n_inner=4 * w, rotary_dim=4, vocab_size=V, n_positions=P), "tokens", {}),
    "Phi": ("PhiForCausalLM", "PhiConfig", lambda w, d: dict(
        hidden_size=w, intermediate_size=4 * w, num_hidden_layers=d, num_attention_heads=H,
        partial_rotary_factor=0.5, **LM), "tokens", {"width_multiple": 16}),  # an even partial rotary dim
    "Gemma": ("GemmaForCausalLM", "GemmaConfig", lambda w, d: dict(
        hidden_size=w, intermediate_size=3 * w, num_hidden_layers=d, head_dim=w // H, **DECODER, **LM), "tokens", {}),
    "Gemma-2": ("Gemma2ForCausalLM", "Gemma2Config", lambda w, d: dict(
        hidden_size=w, intermediate_size=3 * w, num_hidden_layers=d, head_dim=w // H, query_pre_attn_scalar=w // H,
        sliding_window=P, **DECODER, **LM), "tokens", {}),
    "Falcon": ("FalconForCausalLM", "FalconConfig", lambda w, d: dict(
        hidden_size=w, num_hidden_layers=d, num_attention_heads=H, ffn_hidden_size=4 * w, **LM), "tokens", {}),
    "Bloom": ("BloomForCausalLM", "BloomConfig", lambda w, d: dict(
        hidden_size=w, n_layer=d, n_head=H, vocab_size=V, bos_token_id=0, eos_token_id=0, pad_token_id=0),
        "tokens", {}),
    "Mixtral": ("MixtralForCausalLM", "MixtralConfig", lambda w, d: dict(
        hidden_size=w, intermediate_size=3 * w, num_hidden_layers=d, head_dim=w // H, num_local_experts=2,
        num_experts_per_tok=2, sliding_window=None, **DECODER, **LM), "tokens", {}),
    "T5": ("T5ForConditionalGeneration", "T5Config", lambda w, d: dict(
        d_model=w, d_kv=w // H, d_ff=4 * w, num_layers=d, num_decoder_layers=d, num_heads=H, vocab_size=V,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1), "seq2seq", {}),
    "RoBERTa": ("RobertaModel", "RobertaConfig", lambda w, d: dict(
        hidden_size=w, num_hidden_layers=d, num_attention_heads=H, intermediate_size=4 * w, vocab_size=V,
        max_position_embeddings=P + 2, pad_token_id=1), "tokens", {}),
    "DistilBERT": ("DistilBertModel", "DistilBertConfig", lambda w, d: dict(
        dim=w, hidden_dim=4 * w, n_layers=d, n_heads=H, vocab_size=V, max_position_embeddings=P), "tokens", {}),
    "Whisper": ("WhisperModel", "WhisperConfig", lambda w, d: dict(
        d_model=w, encoder_layers=d, decoder_layers=d, encoder_attention_heads=H, decoder_attention_heads=H,
        encoder_ffn_dim=4 * w, decoder_ffn_dim=4 * w, num_mel_bins=16, max_source_positions=8,
        max_target_positions=P, vocab_size=V, pad_token_id=0, bos_token_id=0, eos_token_id=0,
        decoder_start_token_id=0), "audio", {}),
    "Swin": ("SwinModel", "SwinConfig", lambda w, d: dict(
        image_size=16, patch_size=2, embed_dim=w, depths=[d, d], num_heads=[H, H], window_size=4), "images", {}),
    "ConvNeXt": ("ConvNextModel", "ConvNextConfig", lambda w, d: dict(
        image_size=16, patch_size=2, num_stages=2, hidden_sizes=[w, 2 * w], depths=[d, d]), "images", {}),
}


def inputs(kind: str) -> tuple:
    """A batch for the forward: positional (input, attention mask, decoder input) as each model takes them."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, V, (2, 8), generator=g)
    return {"tokens": (ids,), "seq2seq": (ids, None, ids), "audio": (torch.randn(2, 16, 16, generator=g), None, ids),
            "images": (torch.randn(2, 3, 16, 16, generator=g),)}[kind]


def survey_factory(name: str):
    """``factory(width, depth=2)`` for one architecture of the survey, from its small config."""
    model_cls, config_cls, config, _, _ = ARCHITECTURES[name]

    def factory(width, depth=2):
        return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config(width, depth)))

    return factory


def survey(name: str) -> dict:
    _, _, _, kind, options = ARCHITECTURES[name]
    factory = survey_factory(name)
    options = {"width_multiple": 8, **options}
    if kind != "tokens":
        options["example_inputs"] = lambda: inputs(kind)
    row = {"architecture": name, "options": {k: v for k, v in options.items() if k != "example_inputs"}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            f = ezp.wrap(factory, base_width=32, **options)
            plan = f.plan(width=128)
            model = f(width=128)
            out = model(*inputs(kind))
            logits = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
            opt = ezp.get_mup_optimizer(model, lr=1e-3, optimizer="adamw")
            logits.float().square().mean().backward()
            opt.step()
            row["attention"] = sorted({a.via for a in plan.attention.values()}) or "none grows"
            row["tied readout"] = bool(plan.multipliers)
            row["ok"] = True
        except Exception as exc:  # the survey reports every failure, whatever its kind
            row["ok"], row["error"] = False, f"{type(exc).__name__}: {str(exc)[:300]}"
    row["warnings"] = sorted({str(w.message)[:160] for w in caught if issubclass(w.category, UserWarning)})
    return row


def main() -> None:
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    names = sys.argv[1:] or list(ARCHITECTURES)
    rows = []
    for name in names:
        row = survey(name)
        rows.append(row)
        status = f"attention {row['attention']}, tied readout {row['tied readout']}" if row["ok"] else row["error"]
        print(f"{name:11s} {'ok ' if row['ok'] else 'ERR'} {status[:150]}")
        for w in row["warnings"][:3]:
            print(f"{'':15s} warning: {w}")
    out = ROOT / "docs" / "results" / "architectures.json"
    if not sys.argv[1:]:
        out.write_text(json.dumps(rows, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
