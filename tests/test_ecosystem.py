"""PyTorch's habits kept: torch.compile, checkpoints with plan checks, low precision, meta-device scale."""

import copy
import time

import pytest
import torch
from torch import nn

import ezmup_plus as ezp
from ezmup_plus.models.gpt import GPT
from tiny_models import TiedLM, TinyTransformer


IDX = torch.randint(0, 32, (4, 8), generator=torch.Generator().manual_seed(0))


def assert_compiled_equals_eager(model, backend, idx=IDX):
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    out_c, out_e = compiled(idx), eager(idx)
    torch.testing.assert_close(out_c, out_e)
    out_c.square().mean().backward()
    out_e.square().mean().backward()
    for a, b in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    assert ezp.plan_of(compiled) is ezp.plan_of(model)  # found through OptimizedModule._orig_mod


def query_rows_hooked():
    """A forward hook on the first third of a fused QKV's output (the queries)."""
    model = ezp.wrap(TinyTransformer, base_width=16, width_multiple=2, kernel="sdpa", fused=True)(width=64)
    assert ezp.plan_of(model).attention["attn"].via == "query"
    return model


def test_compile_matches_eager_with_multipliers_and_attention_scale():
    tied = ezp.wrap(TiedLM, base_width=16, vocab=32)(width=64)  # a forward hook on the readout
    gpt = ezp.wrap(GPT, base_width=32, width_multiple=4, depth=1, vocab_size=32, block_size=8)(width=64)
    assert ezp.plan_of(tied).multipliers and ezp.plan_of(gpt).attention
    for model in (tied, gpt):
        assert_compiled_equals_eager(model, "aot_eager")
    assert_compiled_equals_eager(query_rows_hooked(), "aot_eager", IDX % 16)


def test_inductor_compiles_a_hooked_model_to_the_same_outputs_and_gradients():
    import torch._inductor.config as inductor_config

    # The vector ISA from the CPU's flags, not from a probe compiled per ISA: 10 of the 25 s on a cold cache.
    with inductor_config.patch({"cpp.vec_isa_ok": True}):
        assert_compiled_equals_eager(query_rows_hooked(), "inductor", IDX % 16)  # C++ codegen: one model is enough


def test_checkpoint_round_trip_continues_bit_identically(tmp_path):
    f = ezp.wrap(TiedLM, base_width=16, vocab=32)

    def train(model, opt, n):
        for _ in range(n):
            opt.zero_grad()
            nn.functional.cross_entropy(model(IDX).flatten(0, 1), IDX.flatten()).backward()
            opt.step()

    torch.manual_seed(0)
    model = f(width=64)
    opt = ezp.get_mup_optimizer(model, lr=1e-2, weight_decay=0.1)
    train(model, opt, 2)
    ezp.save_checkpoint(tmp_path / "ckpt.pt", model, opt, step=2)
    train(model, opt, 2)
    torch.manual_seed(1)
    fresh = f(width=64)
    fresh_opt = ezp.get_mup_optimizer(fresh, lr=1e-2, weight_decay=0.1)
    assert ezp.load_checkpoint(tmp_path / "ckpt.pt", fresh, fresh_opt)["step"] == 2
    train(fresh, fresh_opt, 2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))
    with pytest.raises(ValueError, match=r"another muP plan \(width: saved 64, model 128"):
        ezp.load_checkpoint(tmp_path / "ckpt.pt", f(width=128))
    with pytest.raises(ValueError, match=r"parametrization: saved mup, model sp"):
        ezp.load_checkpoint(tmp_path / "ckpt.pt", ezp.wrap(TiedLM, base_width=16, parametrization="sp", vocab=32)(width=64))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_builds_and_trains(dtype):
    f = ezp.wrap(GPT, base_width=32, width_multiple=4, depth=1, vocab_size=32, block_size=8)
    torch.manual_seed(0)
    model = f(width=128, dtype=dtype)
    torch.manual_seed(0)
    reference = f(width=128)  # the same init in fp32, then cast: init is computed in fp32
    assert all(p.dtype == dtype for p in model.parameters())
    assert all(torch.equal(p, r.to(dtype)) for p, r in zip(model.parameters(), reference.parameters()))
    # pure fp16 parameters need an eps fp16 can hold (1e-8 is 0 there, for plain AdamW too)
    opt = ezp.get_mup_optimizer(model, lr=1e-3, optimizer="adamw", eps=1e-3)
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(IDX).float().flatten(0, 1), IDX.flatten())
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)


def test_a_7b_sized_plan_is_traced_on_meta_in_seconds():
    f = ezp.wrap(GPT, base_width=256, base_depth=2, width_multiple=32, vocab_size=32000, block_size=2048, n_head=32)
    start = time.perf_counter()
    plan = f.plan(width=4096, depth=32)  # ~6.9B parameters; nothing of that size is ever allocated
    elapsed = time.perf_counter() - start
    n = sum(torch.Size(t.shape).numel() for t in plan)
    assert 6.0e9 < n < 7.5e9 and len(plan) == 2 + 32 * 12 + 3
    assert elapsed < 120  # generous: the work is the small base build, not the 7B shapes


def test_device_argument_builds_directly_on_meta():
    f = ezp.wrap(GPT, base_width=32, width_multiple=4, depth=1)
    model = f(width=1024, device="meta")
    assert all(p.is_meta for p in model.parameters())


def test_materialized_from_meta_then_rescaled_matches_a_direct_build():
    f = ezp.wrap(GPT, base_width=32, width_multiple=4, depth=1)
    big = f(width=256, device="meta")
    big.to_empty(device="cpu")
    torch.manual_seed(0)
    big.apply(GPT._init)  # the model's own init, as a deferred-init workflow would run it
    ezp.rescale_init(big)
    plan = ezp.plan_of(big)
    rescaled = [t for t in plan if t.init_std is not None and t.init_factor != 1.0]
    assert {t.role for t in rescaled} == {"hidden", "output"}
    params = dict(big.named_parameters())
    for t in rescaled:  # the factory's law at the target, not this draw's std: equal within sampling error
        assert float(params[t.name].detach().std()) == pytest.approx(t.init_std, rel=0.02), t.name
