"""What ezmup_plus costs against plain PyTorch, measured as ratios in one run.

(a) optimizer step time, get_mup_optimizer vs the plain optimizer (same foreach setting), ~50M-parameter GPT,
    as the median per-pair ratio with a 95% bootstrap interval;
(b) build: f(width=W) vs the plain factory, extra seconds (tracing) and peak-memory ratio;
(c) the same build at GPT-2-XL size (1.5B parameters);
(d) torch.compile step time with and without ezmup_plus.
Peak memory is each build's own subprocess's max RSS.  python benchmarks/overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import ezmup_plus as ezp  # noqa: E402
from ezmup_plus.hybrid import MuonHybrid  # noqa: E402
from ezmup_plus.models.gpt import GPT  # noqa: E402
from ezmup_plus.diagnostics.optimum import RESAMPLES, interval, median  # noqa: E402
from ezmup_plus.optim import MUON_ADJUST_LR, OPTIMIZERS  # noqa: E402

BUILD = """
import resource, sys, time, torch
sys.path.insert(0, {root!r})
import ezmup_plus as ezp
from ezmup_plus.models.gpt import GPT
kw = dict(depth={depth}, vocab_size=50257, block_size=1024, n_head={heads})
start = time.perf_counter()
if {mup}:
    f = ezp.wrap(GPT, base_width={base}, width_multiple={heads}, **kw)
    f.plan(width={width})
    traced = time.perf_counter()
    model = f(width={width})
else:
    traced = start
    model = GPT({width}, **kw)
end = time.perf_counter()
print(traced - start, end - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
"""


def build_in_subprocess(mup: bool, width: int, depth: int, heads: int, base: int) -> tuple[float, float, float]:
    code = BUILD.format(root=str(ROOT), mup=mup, width=width, depth=depth, heads=heads, base=base)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1]), float(out[2])


def step_time_ratio(model: torch.nn.Module, name: str, reps: int) -> dict[str, float]:
    """Step times of the muP and the plain optimizer, interleaved so both see the same machine: the medians,
    and the median of the per-pair ratios with its bootstrap interval (the run's own noise)."""
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    ours = ezp.get_mup_optimizer(model, lr=1e-3, optimizer=name, foreach=True)
    cls, family = OPTIMIZERS[name]
    if cls is MuonHybrid:  # the same split by hand, one group each: what a user would write without muP
        plan = ezp.plan_of(model)
        hidden = [p for n, p in model.named_parameters() if plan[n].role == "hidden" and p.dim() == 2]
        rest = [p for n, p in model.named_parameters() if not (plan[n].role == "hidden" and p.dim() == 2)]
        plain = MuonHybrid([{"params": hidden}], [{"params": rest}], lr=1e-3,
                           adamw_kwargs={"foreach": True, "weight_decay": 0.0},
                           muon_kwargs={"adjust_lr_fn": MUON_ADJUST_LR[family], "weight_decay": 0.0})
    else:  # weight decay 0 as ours (AdamW's default 0.01 would add a decay step to the plain one only)
        plain = cls(model.parameters(), lr=1e-3, foreach=True, weight_decay=0.0)
    times = {"ours": [], "plain": []}
    for _ in range(reps + 1):  # the first pair warms up both
        for key, opt in (("ours", ours), ("plain", plain)):
            start = time.perf_counter()
            opt.step()
            times[key].append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(times["ours"][1:], times["plain"][1:])]
    rng = random.Random(0)
    low, high = interval([median(rng.choices(ratios, k=len(ratios))) for _ in range(RESAMPLES)])
    return {"ezmup_plus": median(times["ours"][1:]), "plain": median(times["plain"][1:]),
            "ratio": median(ratios), "ratio_interval": [low, high]}


def compile_ratio(steps: int) -> dict[str, float]:
    """Training-step time after torch.compile vs eager, for the plain GPT and the muP one."""
    idx = torch.randint(0, 65, (8, 64))
    result = {}
    for label, model in (("plain", GPT(256, depth=2, n_head=4)),
                         ("ezmup_plus", ezp.wrap(GPT, base_width=64, width_multiple=4, depth=2)(width=256))):
        for mode in ("eager", "compiled"):
            net = torch.compile(model) if mode == "compiled" else model
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                opt.zero_grad()
                net(idx).square().mean().backward()
                opt.step()
                times.append(time.perf_counter() - start)
            result[f"{label} {mode} (s/step)"] = median(times[2:])
    result["compiled/eager, plain"] = result["plain compiled (s/step)"] / result["plain eager (s/step)"]
    result["compiled/eager, ezmup_plus"] = result["ezmup_plus compiled (s/step)"] / result["ezmup_plus eager (s/step)"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models, no GPT-2-XL build, no compile")
    args = parser.parse_args()
    torch.manual_seed(0)
    width, depth = (256, 2) if args.quick else (640, 10)
    model = ezp.wrap(GPT, base_width=64, width_multiple=8, depth=depth, n_head=8)(width=width)
    n_params = sum(p.numel() for p in model.parameters())
    results: dict = {"params": n_params, "step_time": {}}
    print(f"(a) optimizer step, GPT with {n_params / 1e6:.1f}M parameters, foreach=True, interleaved steps")
    for name in sorted(OPTIMIZERS):
        t = step_time_ratio(model, name, reps=5 if args.quick else (15 if name.startswith("muon") else 41))
        results["step_time"][name] = t
        print(f"    {name:10s} ezmup_plus {t['ezmup_plus'] * 1e3:8.2f} ms   plain {t['plain'] * 1e3:8.2f} ms   "
              f"ratio {t['ratio']:.3f} [{t['ratio_interval'][0]:.3f}, {t['ratio_interval'][1]:.3f}]")

    sizes = [("small", 256, 4, 8, 64)] + ([] if args.quick else [("gpt2-xl", 1600, 48, 25, 400)])
    results["build"] = {}
    for label, w, d, heads, base in sizes:
        _, plain_time, plain_mem = build_in_subprocess(False, w, d, heads, base)
        trace, ours_time, ours_mem = build_in_subprocess(True, w, d, heads, base)
        results["build"][label] = {"plain_s": plain_time, "ezmup_plus_s": ours_time, "tracing_s": trace,
                                   "plain_peak_gib": plain_mem, "ezmup_plus_peak_gib": ours_mem,
                                   "peak_ratio": ours_mem / plain_mem}
        print(f"(b) build {label} (width {w}, depth {d}): plain {plain_time:.2f} s, ezmup_plus {ours_time:.2f} s "
              f"(tracing and plan {trace:.2f} s); peak memory {ours_mem:.2f} / {plain_mem:.2f} GiB = "
              f"{ours_mem / plain_mem:.3f}")
    if not args.quick:
        results["compile"] = compile_ratio(steps=40)
        print("(d) " + ", ".join(f"{k}: {v:.4g}" for k, v in results["compile"].items()))
    out = ROOT / "docs" / "results" / ("overhead_quick.json" if args.quick else "overhead.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
