"""Real models nobody here wrote (Hugging Face GPT-2, Llama, BERT, ViT) and a CNN: roles by name,
bit-identity at base, tied readouts, 1/d attention, and the coordinate check from base to 4x base."""

import warnings

import pytest
import torch
from torch import nn

import ezmup_plus as ezp
from ezmup_plus.data import lm_loss
from ezmup_plus.diagnostics import coord_check
from ezmup_plus.models import hf
from ezmup_plus.models.cnn import CNN
from ezmup_plus.models.gpt import GPT
from tiny_models import TiedLM

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

TOKENS = torch.randint(0, 65, (8, 17), generator=torch.Generator().manual_seed(0))
IMAGES = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def base_is_bit_identical(f, plain, width=32):
    """Same seed, same parameters: at its base width the muP model is the factory's own."""
    torch.manual_seed(0)
    ours = dict(f(width=width).named_parameters())
    torch.manual_seed(0)
    theirs = dict(plain(width).named_parameters())
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def block_outputs_flat(factory, widths, data, loss_fn, pattern):
    """Each block output's activation RMS after 3 Adam steps stays within a factor 1.5 over the widths."""
    check = coord_check(factory, widths, data, loss_fn=loss_fn, steps=3, lr=1e-2,
                        modules=lambda name, m: pattern(name))
    assert check.modules, "no block was watched"
    for module in check.modules:
        rms = [r.rms for r in check.rows if r.module == module and r.step == 3]
        assert max(rms) / min(rms) < 1.5, (module, rms)
    return check


def causal_lm_loss(out, y):
    return lm_loss(out.logits, y)


# --- GPT-2: Conv1D stored (in, out), tied embedding and readout ----------------------------------

@pytest.fixture(scope="module")
def gpt2():
    return ezp.wrap(hf.gpt2, base_width=32, width_multiple=4)


def test_gpt2_roles_tied_readout_and_attention(gpt2):
    plan = gpt2.plan(width=128)
    c_attn = plan["transformer.h.0.attn.c_attn.weight"]
    assert str(c_attn.shape_expr) == "(w, 3*w)" and str(c_attn.fan_in) == "w" and c_attn.role == "hidden"
    assert plan["transformer.wte.weight"].role == "input" and plan["transformer.wpe.weight"].role == "input"
    assert "lm_head.weight" not in plan.tensors  # tied: one tensor, planned as the embedding
    assert plan.multipliers == {"lm_head": pytest.approx(1 / 4)}
    assert plan["transformer.wte.weight"].lr_mult == 1.0 and plan["transformer.wte.weight"].multiplier == 0.25
    assert {m: (a.factor, a.via, a.query, a.start, a.stop) for m, a in plan.attention.items()} == {
        f"transformer.h.{i}.attn": (pytest.approx(0.5), "scaling", f"transformer.h.{i}.attn.c_attn", 0, 128)
        for i in (0, 1)}  # through GPT-2's own attribute; the query rows are known for export
    model = gpt2(width=128)
    # head dim 32 at width 128, 8 at base 32: 1/d relative to base is sqrt(8)/32
    assert model.transformer.h[1].attn.scaling == pytest.approx(8**0.5 / 32)


def test_gpt2_base_is_bit_identical(gpt2):
    assert base_is_bit_identical(gpt2, hf.gpt2)
    assert gpt2(width=32).transformer.h[0].attn.scaling == 8**-0.5


def test_gpt2_coordinate_check(gpt2):
    block_outputs_flat(gpt2, [32, 64, 128], (TOKENS[:, :-1], TOKENS[:, 1:]), causal_lm_loss,
                       lambda n: n.startswith("transformer.h.") and n.count(".") == 2)


# --- Llama: RMSNorm, SwiGLU, grouped-query attention ------------------------------------------

def test_llama_roles_base_and_coordinate_check():
    f = ezp.wrap(hf.llama, base_width=32, width_multiple=8)
    plan = f.plan(width=128)
    assert str(plan["model.layers.0.self_attn.k_proj.weight"].shape_expr) == "(w/2, w)"
    assert plan["model.layers.0.self_attn.k_proj.weight"].role == "hidden"
    assert plan["model.layers.0.mlp.gate_proj.weight"].role == "hidden"
    assert plan["model.layers.0.input_layernorm.weight"].role == "vector"
    assert plan["model.embed_tokens.weight"].role == "input" and plan["lm_head.weight"].role == "output"
    assert plan.attention["model.layers.0.self_attn"].factor == pytest.approx(0.5)
    assert base_is_bit_identical(f, hf.llama)
    block_outputs_flat(f, [32, 64, 128], (TOKENS[:, :-1], TOKENS[:, 1:]), causal_lm_loss,
                       lambda n: n.startswith("model.layers.") and n.count(".") == 2)


# --- OPT: tied readout; its queries are scaled before the kernel, so the logit factor is folded ---------

def test_opt_folds_the_logit_factor_into_its_query_projection():
    f = ezp.wrap(hf.opt, base_width=32, width_multiple=4)
    plan = f.plan(width=128)
    a = plan.attention["model.decoder.layers.0.self_attn"]
    assert (a.factor, a.via, a.query) == (pytest.approx(0.5), "fold", "model.decoder.layers.0.self_attn.q_proj")
    q, k = (plan[f"model.decoder.layers.0.self_attn.{n}_proj.weight"] for n in "qk")
    assert (q.init_factor, q.lr_mult, q.eps_mult) == pytest.approx((k.init_factor / 2, k.lr_mult / 2, k.eps_mult * 2))
    assert plan.multipliers == {"lm_head": pytest.approx(1 / 4)}  # tied to the token embedding
    assert plan["model.decoder.embed_positions.weight"].role == "input"
    assert base_is_bit_identical(f, hf.opt)
    # from 64 up: at the base 32 the block RMS is 1.4x higher (a finite-width effect; SP grows 34x by 256)
    block_outputs_flat(f, [64, 128, 256], (TOKENS[:, :-1], TOKENS[:, 1:]), causal_lm_loss,
                       lambda n: n.startswith("model.decoder.layers.") and n.count(".") == 3)


# --- BERT: post-LN encoder with token-type embeddings -------------------------------------------

def test_bert_roles_base_and_coordinate_check():
    f = ezp.wrap(hf.bert, base_width=32, width_multiple=4)
    plan = f.plan(width=128)
    assert plan["embeddings.token_type_embeddings.weight"].role == "input"
    assert plan["encoder.layer.0.intermediate.dense.weight"].role == "hidden"
    assert plan["embeddings.LayerNorm.weight"].role == "vector"
    assert base_is_bit_identical(f, hf.bert)
    block_outputs_flat(f, [32, 64, 128], (TOKENS, None), lambda out, _: out.last_hidden_state[:, 0].sum(-1).pow(2).mean(),
                       lambda n: n.startswith("encoder.layer.") and n.count(".") == 2)


# --- ViT from transformers (timm needs torchvision, which cannot load here) -----------------------

def test_vit_roles_base_and_coordinate_check():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cls token and position table: bare tensors the trace sees added in
        f = ezp.wrap(hf.vit, base_width=32, width_multiple=4, example_inputs=lambda: (IMAGES[:2],))
        plan = f.plan(width=128)
    assert plan["vit.embeddings.cls_token"].role == "input"
    assert plan["vit.embeddings.position_embeddings"].role == "input"
    assert plan["vit.embeddings.patch_embeddings.projection.weight"].role == "input"
    assert plan["classifier.weight"].role == "output"
    assert base_is_bit_identical(f, hf.vit)
    labels = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(1))
    block_outputs_flat(f, [32, 64, 128], (IMAGES, labels), lambda out, y: nn.functional.cross_entropy(out.logits, y),
                       lambda n: n.startswith("vit.layers.") and n.count(".") == 2)


# --- CNN: channels scale, kernels are finite -------------------------------------------------------

def test_cnn_roles_and_coordinate_check():
    f = ezp.wrap(CNN, base_width=8)
    plan = f.plan(width=32)
    conv = plan["features.2.weight"]
    assert str(conv.shape_expr) == "(2*w, w, 3, 3)" and str(conv.fan_in) == "9*w" and conv.role == "hidden"
    assert plan["features.0.weight"].role == "input" and plan["head.weight"].role == "output"
    assert conv.lr_mult == pytest.approx(1 / 4)
    labels = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(1))
    check = coord_check(f, [8, 32, 128], (IMAGES, labels), loss_fn=nn.functional.cross_entropy, lr=1e-2)
    assert check.ok, str(check)
    assert not coord_check(CNN, [8, 32, 128], (IMAGES, labels), loss_fn=nn.functional.cross_entropy, lr=1e-2).ok


# --- attention and tied weights on models written here ------------------------------------------

def test_attention_scale_is_relative_to_base_and_can_be_turned_off():
    f = ezp.wrap(GPT, base_width=32, width_multiple=4, depth=1)
    assert f(width=32).blocks[0].attn.scaling == 8**-0.5  # base unchanged
    assert f(width=128).blocks[0].attn.scaling == pytest.approx(8**0.5 / 32)  # sqrt(d_base) / d
    off = ezp.wrap(GPT, base_width=32, width_multiple=4, depth=1, attn_scale="1/sqrt(d)")
    assert off(width=128).blocks[0].attn.scaling == pytest.approx(32**-0.5)
    heads_grow = ezp.wrap(lambda width: GPT(width, depth=1, n_head=width // 8), base_width=32, width_multiple=8)
    assert heads_grow.plan(width=128).attention == {}  # fixed head dim: nothing changes
    with pytest.raises(ValueError, match="attn_scale='1/e' is unknown"):
        ezp.wrap(GPT, base_width=32, attn_scale="1/e")


def test_tied_readout_steps_equal_a_hand_written_reference():
    """TP5 Table 8: the tied table keeps the embedding's init and LR; the logits are multiplied by 1/m_w."""
    f = ezp.wrap(TiedLM, base_width=32)
    torch.manual_seed(0)
    model = f(width=128)  # m_w = 4
    ref = TiedLM(128)
    ref.load_state_dict(model.state_dict())
    lr = 1e-2
    ref_opt = torch.optim.Adam([{"params": [ref.emb.weight, ref.hidden.bias], "lr": lr},
                                {"params": [ref.hidden.weight], "lr": lr / 4, "eps": 1e-8 / 4}], lr=lr)
    opt = ezp.get_mup_optimizer(model, lr=lr, optimizer="adam")
    idx = torch.randint(0, 16, (8, 5), generator=torch.Generator().manual_seed(0))
    for _ in range(4):
        for net, o, scale in ((model, opt, 1.0), (ref, ref_opt, 0.25)):
            o.zero_grad()
            nn.functional.cross_entropy((scale * net(idx)).flatten(0, 1), idx.flatten()).backward()
            o.step()
    with torch.no_grad():
        torch.testing.assert_close(model(idx), 0.25 * ref(idx))


def test_zero_init_readout_and_unfused_query():
    f = ezp.wrap(hf.llama, base_width=32, width_multiple=8, zero_init=["readout", "query"])
    plan = f.plan(width=64)
    assert plan["lm_head.weight"].init_std == 0.0 and plan["model.layers.1.self_attn.q_proj.weight"].init_std == 0.0
    assert plan["model.layers.1.self_attn.k_proj.weight"].init_std > 0
    model = f(width=64)
    assert not model.lm_head.weight.any() and not model.model.layers[1].self_attn.q_proj.weight.any()
    assert model.model.layers[1].self_attn.k_proj.weight.any()
    with pytest.raises(ValueError, match=r"queries of blocks.0.attn come from blocks.0.attn.c_attn.*fused"):
        ezp.wrap(GPT, base_width=32, width_multiple=4, depth=1, zero_init=["query"]).plan(width=64)
    with pytest.raises(ValueError, match="no untied readout matrix"):
        ezp.wrap(TiedLM, base_width=32, zero_init=["readout"]).plan(width=64)
    with pytest.raises(ValueError, match=r"\['keys'\] unknown"):
        ezp.wrap(GPT, base_width=32, zero_init=["keys"])


# --- Falcon and Bloom: query rows that are no single block of their fused QKV ------------------

def test_falcon_and_bloom_logits_equal_a_hand_written_one_over_d(monkeypatch):
    """Falcon's multi-query heads + 2 layout and Bloom's per-head (q, k, v) rows get 1/d on their query rows; the
    reference is the plain model at the same width whose kernel is given the 1/d scale by hand."""
    sdpa = nn.functional.scaled_dot_product_attention
    for factory, rows in ((hf.falcon, (0, 128, 0, 1)), (hf.bloom, (0, 32, 96, 4))):
        f = ezp.wrap(factory, base_width=32, width_multiple=8)
        plan = f.plan(width=128)
        a, tied = plan.attention["transformer.h.0.self_attention"], plan.multipliers["lm_head"]  # 1/m_w, tied readout
        assert (a.factor, a.via, (a.start, a.stop, a.every, a.blocks)) == (pytest.approx(0.5), "query", rows)
        torch.manual_seed(0)
        ours = f(width=128)
        reference = factory(128)
        reference.load_state_dict(ours.state_dict())
        for block in reference.transformer.h:  # Bloom passes this to baddbmm; Falcon's sdpa is given the scale
            block.self_attention.inv_norm_factor *= a.factor
        idx = TOKENS[:2, :9]
        outputs = []
        for model in (ours, reference):
            with monkeypatch.context() as patch:
                if model is reference:
                    patch.setattr(nn.functional, "scaled_dot_product_attention",
                                  lambda q, k, v, **kw: sdpa(q, k, v, scale=a.factor / q.shape[-1] ** 0.5, **kw))
                outputs.append(model(idx).logits * (tied if model is reference else 1.0))
                lm_loss(outputs[-1], idx).backward()
        torch.testing.assert_close(*outputs)
        for (name, p), q in zip(ours.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=name)
