"""Regression data: the plan of every model in the tests, the examples and the architecture survey, at two
target widths and one depth, saved as JSON so that a change to the pipeline cannot move a number unseen.

    python tests/plan_cases.py            rewrite tests/data/plans/*.json (only when a change is meant)
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PLANS = HERE / "data" / "plans"
sys.path[:0] = [str(HERE), str(HERE.parent / "benchmarks")]

import ezmup_plus as ezp  # noqa: E402
from ezmup_plus.models import hf  # noqa: E402
from ezmup_plus.models.cnn import CNN  # noqa: E402
from ezmup_plus.models.gpt import GPT  # noqa: E402
from ezmup_plus.models.mlp import MLP  # noqa: E402
from tiny_models import DenseMoE, HookResNet, IndexAddMoE, TiedLM, TinyTransformer  # noqa: E402

IMAGES = lambda: (torch.randn(2, 3, 16, 16),)  # noqa: E731
NAMED_TEST_MODELS = {  # test module -> (class, wrap options) of the module-level models wrapped there
    "test_depth": {"ResMLP": dict(base_width=32, base_depth=2)},
    "test_usage": {"StoredInOut": dict(base_width=32, width_multiple=4, example_inputs=(torch.randn(2, 8),)),
                   "SameWithLinears": dict(base_width=32), "TiedMatmulLM": dict(base_width=32),
                   "Cumsum": dict(base_width=32), "ScaledEmbedding": dict(base_width=32),
                   **dict.fromkeys(("PerHeadFused", "MultiQueryFused", "InterleavedQKV", "NormalizedQueries",
                                    "TorchEncoder"),
                                   dict(base_width=16, width_multiple=2))},
}


def cases() -> dict[str, tuple]:
    """name -> (factory, wrap options, two target widths, target depth or None)."""
    found = {
        "mlp": (MLP, dict(base_width=16), (64, 256), None),
        "mlp_sp": (MLP, dict(base_width=16, parametrization="sp"), (64, 256), None),
        "gpt": (GPT, dict(base_width=32, base_depth=2, width_multiple=4), (64, 128), 4),
        "gpt_depth_mup": (GPT, dict(base_width=32, base_depth=2, width_multiple=4, parametrization="depth_mup"),
                          (64, 128), 4),
        "cnn": (CNN, dict(base_width=8), (16, 32), None),
        "hf_gpt2": (hf.gpt2, dict(base_width=32, base_depth=2, width_multiple=4), (64, 128), 4),
        "hf_llama": (hf.llama, dict(base_width=32, base_depth=2, width_multiple=8), (64, 128), 4),
        "hf_llama_zero_init": (hf.llama, dict(base_width=32, width_multiple=8, zero_init=["readout", "query"]),
                               (64, 128), None),
        "hf_opt": (hf.opt, dict(base_width=32, width_multiple=4), (64, 128), None),
        "hf_bert": (hf.bert, dict(base_width=32, base_depth=2, width_multiple=4), (64, 128), 4),
        "hf_vit": (hf.vit, dict(base_width=32, base_depth=2, width_multiple=4, example_inputs=IMAGES), (64, 128), 4),
        "tied_lm": (TiedLM, dict(base_width=16, vocab=32), (64, 128), None),
        "hook_resnet": (HookResNet, dict(base_width=32, base_depth=2), (64, 128), 4),
        "dense_moe": (DenseMoE, dict(base_width=32), (64, 128), None),
        "index_add_moe": (IndexAddMoE, dict(base_width=32), (64, 128), None),
    }
    for kernel, fused, q_norm in (("matmul", False, False), ("sdpa", True, False), ("sdpa", False, True),
                                  ("softcap", False, False)):
        found[f"tiny_transformer_{kernel}{'_fused' if fused else ''}{'_qnorm' if q_norm else ''}"] = (
            TinyTransformer, dict(base_width=16, width_multiple=2, kernel=kernel, fused=fused, q_norm=q_norm),
            (64, 128), None)
    for module, models in NAMED_TEST_MODELS.items():
        for name, options in models.items():
            depth = options.get("base_depth")
            found[f"{module[5:]}_{name}"] = (getattr(__import__(module), name), options, (64, 128),
                                            None if depth is None else 2 * depth)
    from architectures import ARCHITECTURES, survey_factory, wrap_options

    for arch in ARCHITECTURES:
        found[f"survey_{arch}"] = (survey_factory(arch), dict(base_width=32, base_depth=2, **wrap_options(arch)),
                                   (64, 128), 4)
    return found


def plans(factory, options, widths, depth) -> dict:
    """The plans as plain data, or the error that stops them (an error is regression data too)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            f = ezp.wrap(factory, **options)
            return {str(w): f.plan(width=w, depth=depth).to_dict() for w in widths}
        except Exception as exc:  # what stops a model is part of what must not change unseen
            return {"error": f"{type(exc).__name__}: {exc}"}


def canonical(data) -> str:
    return json.dumps(data, indent=1, sort_keys=True, default=str)


def main() -> None:
    PLANS.mkdir(parents=True, exist_ok=True)
    for name, case in cases().items():
        (PLANS / f"{name}.json").write_text(canonical(plans(*case)) + "\n")
        print(f"wrote {name}")


if __name__ == "__main__":
    main()
