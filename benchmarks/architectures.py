"""Which Hugging Face architectures ezmup_plus plans untouched: a survey on small configs, nothing downloaded.

Each is wrapped at base width 32 (4 heads), planned, built and given one AdamW step at width 128, then
coordinate-checked from base to 4x base (block outputs and the readout's change after 3 Adam steps at widths
32, 64, 128, two seeds: muP must pass, SP must fail; see :func:`coordinate_check`). Where one fails as
configured, :data:`WAYS_OUT` says why and gives the wrap options it passes with, checked the same way. The
table says where the forward was traced (meta, or CPU where meta fails), how attention logits were rescaled
(the `scaling` attribute, folded into the query projection, a hook on the query rows, or the rows of an
in_proj_weight), which width-dependent numbers were held at base, which warnings were raised, or the error
that stopped it.
    python benchmarks/architectures.py [NAME ...]      (writes docs/results/architectures.json and the README table)
    python benchmarks/architectures.py --readout-terms [--way-out] NAME ...   (what a readout's change is made
        of, per width: as configured, or with the way out the table gives)
"""

from __future__ import annotations

import json
import re
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402

import ezmup_plus as ezp  # noqa: E402
from ezmup_plus.data import lm_loss  # noqa: E402
from ezmup_plus.diagnostics import coord_check  # noqa: E402

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
    "Qwen2-MoE": ("Qwen2MoeForCausalLM", "Qwen2MoeConfig", lambda w, d: dict(
        hidden_size=w, intermediate_size=2 * w, moe_intermediate_size=w, shared_expert_intermediate_size=2 * w,
        num_hidden_layers=d, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1, **DECODER, **LM),
        "tokens", {}),
    "Qwen3-MoE": ("Qwen3MoeForCausalLM", "Qwen3MoeConfig", lambda w, d: dict(
        hidden_size=w, intermediate_size=2 * w, moe_intermediate_size=w, num_hidden_layers=d, head_dim=w // H,
        num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1, **DECODER, **LM), "tokens", {}),
    "OLMoE": ("OlmoeForCausalLM", "OlmoeConfig", lambda w, d: dict(
        hidden_size=w, intermediate_size=w, num_hidden_layers=d, num_experts=4, num_experts_per_tok=2,
        **DECODER, **LM), "tokens", {}),
    "DeepSeek-V3": ("DeepseekV3ForCausalLM", "DeepseekV3Config", lambda w, d: dict(
        hidden_size=w, intermediate_size=2 * w, moe_intermediate_size=w, num_hidden_layers=d,
        num_attention_heads=H, num_key_value_heads=H, q_lora_rank=w // 2, kv_lora_rank=w // 4,
        qk_nope_head_dim=w // H, qk_rope_head_dim=4, v_head_dim=w // H, n_routed_experts=4, n_shared_experts=1,
        num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=0, **LM), "tokens", {}),
    "Mamba": ("MambaForCausalLM", "MambaConfig", lambda w, d: dict(
        hidden_size=w, num_hidden_layers=d, state_size=16, expand=2, conv_kernel=4, time_step_rank=w // 16,
        vocab_size=V, bos_token_id=0, eos_token_id=0, pad_token_id=0), "tokens", {"width_multiple": 16}),
    "Mamba-2": ("Mamba2ForCausalLM", "Mamba2Config", lambda w, d: dict(
        hidden_size=w, num_hidden_layers=d, state_size=16, expand=2, conv_kernel=4, head_dim=16,
        num_heads=w // 8, n_groups=1, chunk_size=8, vocab_size=V, bos_token_id=0, eos_token_id=0,
        pad_token_id=0), "tokens", {"width_multiple": 16}),
    "T5": ("T5ForConditionalGeneration", "T5Config", lambda w, d: dict(
        d_model=w, d_kv=w // H, d_ff=4 * w, num_layers=d, num_decoder_layers=d, num_heads=H, vocab_size=V,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1), "seq2seq", {}),
    "RoBERTa": ("RobertaForMaskedLM", "RobertaConfig", lambda w, d: dict(
        hidden_size=w, num_hidden_layers=d, num_attention_heads=H, intermediate_size=4 * w, vocab_size=V,
        max_position_embeddings=P + 2, pad_token_id=1), "tokens", {}),
    "DistilBERT": ("DistilBertForMaskedLM", "DistilBertConfig", lambda w, d: dict(
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


def wrap_options(name: str) -> dict:
    """The survey's ``wrap`` options of one architecture (base width 32, base depth 2 aside): its own, width multiple
    8 unless it says otherwise, and example inputs where its forward does not take token ids alone."""
    _, _, _, kind, options = ARCHITECTURES[name]
    options = {"width_multiple": 8, **options}
    if kind != "tokens":
        options["example_inputs"] = lambda: inputs(kind)
    return options


def training_batch(kind: str) -> tuple:
    """(forward inputs, targets) the coordinate checks train on: the next token of a fixed batch for language
    models, no targets for the others."""
    ids = torch.randint(2, V, (8, 17), generator=torch.Generator().manual_seed(0))
    return {"tokens": ((ids[:, :-1],), ids[:, 1:]), "seq2seq": ((ids, None, ids), ids)}.get(kind, (inputs(kind), None))


def output_of(out):
    """The logits of a language model, else the last hidden state."""
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def readout_of(model) -> str | None:
    """The name of the module returning the logits (Hugging Face's output embeddings), if the model has one."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return next((n for n, m in model.named_modules() if m is head), None) if head is not None else None


SPREAD = 1.5  # the largest factor from base to 4x base a watched output may move by and pass


def coordinate_check(factory, kind: str, blocks: str, readout: str | None, base: int = 32, seeds: int = 2) -> dict:
    """After 3 Adam steps at lr 1e-2, averaged over ``seeds``: each block output's RMS and the readout's change
    since init (its init shrinks with the width under muP, by design) within a factor 1.5 at widths base, 2x
    and 4x base (base and 4x base with one seed, as the tests run it). ``factory`` wrapped: muP, which must
    pass; plain: SP, which must not. The readout is watched because sandwich norms (Gemma-2) and post-norm
    blocks (BERT-like) keep the block outputs flat under SP too. Language models learn the next token of a
    fixed batch; the others pull their first hidden state's sum towards zero, as the BERT test does. Returns
    the verdict and the worst spread, for the table."""
    data = training_batch(kind)

    def loss(out, y):
        if y is not None and getattr(out, "logits", None) is not None:
            return lm_loss(out.logits, y)
        return out.last_hidden_state[:, 0].float().sum(-1).pow(2).mean()

    widths = (base, 2 * base, 4 * base) if seeds > 1 else (base, 4 * base)
    check = coord_check(factory, widths, data, loss_fn=loss, steps=3, lr=1e-2, seeds=seeds,
                        modules=lambda name, m: re.fullmatch(blocks, name) is not None or name == readout)
    spreads = {m: round(check.spread(m, "delta_rms" if m == readout else "rms"), 2) for m in check.modules}
    worst = max(spreads, key=spreads.get)
    return {"pass": spreads[worst] < SPREAD, "worst": worst, "spread": spreads[worst],
            **({"readout": spreads[readout]} if readout in spreads else {})}


def check_setup(name: str, way_out: bool = True) -> tuple:
    """What a coordinate check of one architecture needs: (muP factory, plain factory, input kind, the blocks'
    name pattern, the readout's name); muP with its way out (:data:`WAYS_OUT`) where it has one and ``way_out``."""
    factory, kind = survey_factory(name), ARCHITECTURES[name][3]
    options = {"base_width": 32, "base_depth": 2, **wrap_options(name), **(WAYS_OUT[name][0] if way_out and
                                                                              name in WAYS_OUT else {})}
    f = ezp.wrap(factory, **options)
    return (f, factory, kind, *watched(f, factory(32)))


def watched(f, model) -> tuple[str, str | None]:
    """(the name pattern of ``f``'s blocks, the name of ``model``'s readout): what the coordinate check watches."""
    return "|".join(re.escape(s.template).replace(r"\{i\}", r"\d+") for s in f.table.stacks), readout_of(model)


def readout_terms(name: str, way_out: bool = False, doublings: int = 4) -> list[dict]:
    """Why a readout's change moves with the width: its output's RMS at init and the coordinate check's split
    of its change (after 3 Adam steps, seed 0, muP; :class:`~ezmup_plus.diagnostics.ReadoutTerms`) into dW.x0
    (the readout's own update), W0.dx (its initial weight times its input's change) and dW.dx, per width from
    base to 2**doublings x base, for the factory as configured or with its way out."""
    f, _, kind, _, readout = check_setup(name, way_out)
    check = coord_check(f, [f.base_width * 2**k for k in range(doublings + 1)], training_batch(kind),
                        loss_fn=lambda out, y: lm_loss(out.logits, y), steps=3, lr=1e-2,
                        modules=lambda n, m: n == readout)
    start = {r.width: r.rms for r in check.rows if r.step == 0}
    change = {r.width: r.delta_rms for r in check.rows if r.step == max(check.steps)}
    return [{"width": t.width, "at init": round(start[t.width], 4), "change": round(change[t.width], 4),
             "dW.x0": round(t.dw_x0, 4), "W0.dx": round(t.w0_dx, 4), "dW.dx": round(t.dw_dx, 4)}
            for t in check.readout]


def survey(name: str, check: bool = True) -> dict:
    kind, options, factory = ARCHITECTURES[name][3], wrap_options(name), survey_factory(name)
    row = {"architecture": name, "options": {k: v for k, v in options.items() if k != "example_inputs"}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            started = time.perf_counter()
            f = ezp.wrap(factory, base_width=32, base_depth=2, **options)
            plan = f.plan(width=128)
            row["analysis seconds"] = round(time.perf_counter() - started, 1)
            row["trace"] = str(f.analysis.forward)
            model = f(width=128)
            opt = ezp.get_mup_optimizer(model, lr=1e-3, optimizer="adamw")
            output_of(model(*inputs(kind))).float().square().mean().backward()
            opt.step()
            row["attention"] = sorted({a.via for a in plan.attention.values()}) or "none grows"
            row["tied readout"] = any(r.tied_readout for r in f.analysis.roles.values())
            row["width constants"] = list(plan.constants)
            row["ok"] = True
        except Exception as exc:  # the survey reports every failure, whatever its kind
            row["ok"], row["error"] = False, f"{type(exc).__name__}: {str(exc)[:300]}"
        if row["ok"] and check:
            try:
                blocks, readout = watched(f, model)
                row["coord check muP"] = coordinate_check(f, kind, blocks, readout)
                row["coord check SP"] = coordinate_check(factory, kind, blocks, readout)
                if name in WAYS_OUT:
                    f = check_setup(name)[0]
                    row["coord check way out"] = coordinate_check(f, kind, blocks, readout, base=f.base_width)
            except Exception as exc:  # reported in the table, with the rest of the row
                row["coord check error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    row["warnings"] = sorted({str(w.message)[:160] for w in caught if issubclass(w.category, UserWarning)})
    return row


# architecture -> (the wrap options it passes with, why it fails as configured): for the table and the tests
WAYS_OUT = {
    "T5": (dict(hparams={"init_input": 0.02}),
           "its readout starts large: with the tied embedding drawn at std 1.0 the logits start at RMS 1.12 at "
           "width 32 and 0.43 at 512 (muP's readout init shrinks them), and W0*dx (the initial weight times its "
           "input's change) is 21-41x dW*x0 and shrinks with them (--readout-terms); a tied readout starts small "
           "only through its embedding (TP5: a zero or small readout), here at GPT-2's std 0.02, and passes only "
           "with T5's d**-0.5 held at base"),
    "Mamba": (dict(hparams={"init_input": 0.2}),
              "its tied embedding's std 0.1 makes W0*dx lead (0.46 against dW*x0's 0.18 at width 32, "
              "--readout-terms); with the embedding at std 0.02"),
    "Mamba-2": (dict(base_width=64, zero_init=["readout"]),
                "W0*dx leads (0.69 against 0.17 at width 32); with a zero readout the change converges from "
                "above, each doubling moving it less (x0.84, 0.89, 0.93, 0.97 from 64 to 1024, --readout-terms "
                "--way-out; 1.46-1.51 over 4x from base 32): from base 64 with a zero readout"),
}


def table(rows: list[dict]) -> str:
    """The README's table: per architecture, plan and step, coordinate check, and how it was traced."""
    lines = ["| architecture | plan + step | coord check muP / SP (worst spread) | traced | attention | held at base "
             "| way out |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        mup, sp = r.get("coord check muP"), r.get("coord check SP")
        check = (f"{'pass' if mup['pass'] else 'FAIL'} {mup['spread']:.2f} / {'PASS' if sp['pass'] else 'fail'} "
                 f"{sp['spread']:.2f}" if sp else "error" if "coord check error" in r else "-")
        trace = r.get("trace", "-").replace("traced on ", "")
        attention = ", ".join(r["attention"]) if isinstance(r.get("attention"), list) else r.get("attention", "-")
        held = "; ".join(c.split(":")[0].split(" multiplies")[0].split(" divides")[0]
                         for c in r.get("width constants", [])) or "-"
        way_out = r.get("coord check error", "")[:120] if r["ok"] else r["error"][:120]
        if r["architecture"] in WAYS_OUT and "coord check way out" in r:
            options, why = WAYS_OUT[r["architecture"]]
            out = r["coord check way out"]
            way_out = f"{why}: {'pass' if out['pass'] else 'FAIL'} {out['spread']:.2f} with `{_options(options)}`"
        lines.append(f"| {r['architecture']} | {'ok' if r['ok'] else 'ERROR'} | {check} | {trace} | {attention} "
                     f"| {held} | {way_out} |")
    return "\n".join(lines)


def _options(options: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


def main() -> None:
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if sys.argv[1:2] == ["--readout-terms"]:  # python benchmarks/architectures.py --readout-terms [--way-out] T5
        way_out = sys.argv[2:3] == ["--way-out"]
        for name in sys.argv[2 + way_out:]:
            for row in readout_terms(name, way_out):
                print(name, "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
        return
    names = sys.argv[1:] or list(ARCHITECTURES)
    rows = []
    for name in names:
        row = survey(name)
        rows.append(row)
        status = (f"muP {row.get('coord check muP')} SP {row.get('coord check SP')}, {row.get('trace')}, "
                  f"attention {row['attention']}" if row["ok"] else row["error"])
        print(f"{name:11s} {'ok ' if row['ok'] else 'ERR'} {status[:150]}", flush=True)
        for w in row["warnings"][:3]:
            print(f"{'':15s} warning: {w}")
    print(table(rows))
    if not sys.argv[1:]:
        out = ROOT / "docs" / "results" / "architectures.json"
        out.write_text(json.dumps(rows, indent=2))
        readme = ROOT / "README.md"
        start, end = "<!-- architectures table: benchmarks/architectures.py -->", "<!-- end of architectures table -->"
        text = readme.read_text()
        if start in text:
            head, rest = text.split(start)
            readme.write_text(head + start + "\n" + table(rows) + "\n" + end + rest.split(end)[1])
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
