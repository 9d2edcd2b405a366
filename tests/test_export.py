"""export_standard: a muP model's multipliers folded into a state dict the plain factory loads, with
equal outputs; and a clear refusal, naming the tensors, where folding is not exact."""

import pytest
import torch
from torch import nn

import ezmup_plus as ezp
from ezmup_plus.data import lm_loss
from ezmup_plus.models import hf
from ezmup_plus.models.gpt import GPT
from test_usage import InterleavedQKV, MultiQueryFused, TorchEncoder
from tiny_models import HookResNet, TiedLM, TinyTransformer

TOKENS = torch.randint(0, 16, (4, 9), generator=torch.Generator().manual_seed(0))


def trained(model, steps=3):
    """A few Adam steps, so that the exported weights are not just the init."""
    opt = ezp.get_mup_optimizer(model, lr=1e-2, optimizer="adamw")
    for _ in range(steps):
        opt.zero_grad()
        lm_loss(model(TOKENS[:, :-1]), TOKENS[:, 1:]).backward()
        opt.step()
    return model


def assert_plain_model_matches(ours, plain, inputs, output=lambda out: out):
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    plain.load_state_dict(ezp.export_standard(ours))
    with torch.no_grad():
        torch.testing.assert_close(output(plain(*inputs)), output(ours(*inputs)))
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())  # the muP model is untouched


def test_attention_factor_folds_into_the_query_rows_of_a_fused_qkv():
    f = ezp.wrap(GPT, base_width=16, width_multiple=4, vocab_size=16, depth=2)
    ours = trained(f(width=64))
    assert ezp.plan_of(ours).attention  # logits x 1/2, through the `scaling` attribute
    assert_plain_model_matches(ours, GPT(64, vocab_size=16, depth=2), (TOKENS,))


@pytest.mark.parametrize("options", [dict(kernel="matmul"), dict(kernel="sdpa", fused=True), dict(q_norm=True)])
def test_a_query_row_hook_folds_into_its_module(options):
    f = ezp.wrap(TinyTransformer, base_width=16, width_multiple=2, **options)
    ours = trained(f(width=64))
    assert_plain_model_matches(ours, TinyTransformer(64, **options), (TOKENS,))


@pytest.mark.parametrize("model", [MultiQueryFused, InterleavedQKV, TorchEncoder])
def test_a_query_row_set_folds_into_its_rows(model):
    """Falcon's heads + 2 layout, Bloom's per-head (q, k, v) rows, nn.MultiheadAttention's in_proj_weight."""
    ours = trained(ezp.wrap(model, base_width=16, width_multiple=2)(width=64)).eval()
    assert_plain_model_matches(ours, model(64).eval(), (TOKENS,))


def test_a_branch_multiplier_on_a_norm_folds_into_its_gain_and_bias():
    class NormEnded(nn.Module):
        def __init__(self, width, depth):
            super().__init__()
            self.emb = nn.Embedding(16, width)
            self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width))
                                        for _ in range(depth))
            self.out = nn.Linear(width, 16)

        def forward(self, idx):
            x = self.emb(idx)
            for block in self.blocks:
                x = x + block(x)
            return self.out(x)

    f = ezp.wrap(NormEnded, base_width=16, base_depth=2)
    ours = trained(f(width=32, depth=8))
    assert ezp.plan_of(ours).multipliers == {f"blocks.{i}.1": 0.25 for i in range(8)}
    assert_plain_model_matches(ours, NormEnded(32, 8), (TOKENS,))


def test_hf_llama_exports_to_the_plain_model():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    f = ezp.wrap(hf.llama, base_width=32, width_multiple=8, vocab_size=16)
    ours = f(width=64)
    assert ezp.plan_of(ours).attention["model.layers.0.self_attn"].query == "model.layers.0.self_attn.q_proj"
    assert_plain_model_matches(ours, hf.llama(64, vocab_size=16), (TOKENS,), lambda out: out.logits)


def test_what_cannot_be_folded_is_named():
    with pytest.raises(ValueError, match=r"head.weight is the same tensor as emb.weight \(tied\)"):
        ezp.export_standard(ezp.wrap(TiedLM, base_width=32)(width=64))
    with pytest.raises(ValueError, match=r"blocks.0 multiplies its output by 0.5 but owns no weight"):
        ezp.export_standard(ezp.wrap(HookResNet, base_width=32, base_depth=2)(width=32, depth=4))
    with pytest.raises(LookupError, match="carries no muP plan"):
        ezp.export_standard(nn.Linear(2, 2))


def test_at_base_and_under_sp_nothing_changes():
    model = ezp.wrap(GPT, base_width=16, width_multiple=4, vocab_size=16)(width=16)
    exported = ezp.export_standard(model)
    assert all(torch.equal(exported[k], v) for k, v in model.state_dict().items())
    sp = ezp.wrap(TiedLM, base_width=32, parametrization="sp")(width=128)
    assert all(torch.equal(ezp.export_standard(sp)[k], v) for k, v in sp.state_dict().items())
