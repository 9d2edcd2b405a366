"""What getting a muP model costs, side by side in one run: the plain factory, ezmup_plus's first build (by
stage), its cached build, and microsoft/mup's set_base_shapes path.

Configs: a ~77M GPT (6 blocks, width 1024, head dim 64, base width 128) built on CPU; GPT-2-XL-sized
(48 blocks, width 1600) and Llama-7B-sized (32 blocks, width 4096) GPTs built on meta. Each arm runs in
its own fresh subprocess (imports warmed first, so what is timed is the work), repeats interleaved across
arms, medians of --repeats.
    python benchmarks/build_cost.py [--repeats 3] [--configs gpt77m xl 7b]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"

CONFIGS = {  # name -> (width, depth, base width, vocab, device)
    "gpt77m": (1024, 6, 128, 512, "cpu"),
    "xl": (1600, 48, 256, 50257, "meta"),
    "7b": (4096, 32, 256, 32000, "meta"),
}

ARM = r"""
import contextlib, json, sys, time
sys.path.insert(0, {root!r})
import torch
import ezmup_plus as ezp
from ezmup_plus import analysis
from ezmup_plus.models.gpt import GPT

WIDTH, DEPTH, BASE, VOCAB, DEVICE = {config!r}


def make(width, depth=DEPTH):  # head dim 64: the head count grows with the width
    return GPT(width, depth, vocab_size=VOCAB, block_size=1024, n_head=max(1, width // 64))


def on(device):  # no device mode on CPU, where the factory builds as it would for a user
    return torch.device(device) if device == "meta" else contextlib.nullcontext()


def timed(stages, name, fn):
    def run(*a, **k):
        start = time.perf_counter()
        out = fn(*a, **k)
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - start
        return out
    return run


with torch.device("meta"):  # warm the imports and kernels: the timed work starts after this
    make(64, 1)
arm, stages = {arm!r}, {{}}
start = time.perf_counter()
if arm == "plain":
    with on(DEVICE):
        model = make(WIDTH)
elif arm == "mup":
    from mup import MuReadout, set_base_shapes
    from mup.init import normal_

    def mu(width, device):
        with on(device):
            m = make(width)
            m.lm_head = MuReadout(width, VOCAB, bias=False)
        return m

    model = mu(WIDTH, DEVICE)
    set_base_shapes(model, mu(BASE, "meta"), delta=mu(2 * BASE, "meta"))
    if DEVICE != "meta":
        for name, p in model.named_parameters():
            if p.dim() >= 2:  # GPT-2's N(0, 0.02) again, now through mup's width-aware init
                normal_(p, std=0.02)
else:
    for name in ("probe", "probe_depth", "_traces", "checked_laws", "learn"):
        setattr(analysis, name, timed(stages, name, getattr(analysis, name)))
    f = ezp.wrap(make, base_width=BASE, base_depth=DEPTH, width_multiple=64, cache={cache!r})
    t0 = time.perf_counter()
    f.analysis
    stages["analysis"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = f.plan(width=WIDTH)
    stages["plan"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = f(width=WIDTH, device=DEVICE if DEVICE == "meta" else None)
    stages["build"] = time.perf_counter() - t0
total = time.perf_counter() - start
print(json.dumps({{"seconds": total, "stages": stages, "params": sum(p.numel() for p in model.parameters())}}))
"""


def run_arm(config: tuple, arm: str, cache: str | bool, scripts: Path) -> dict:
    """One arm in a fresh process; the script is a file (the cache keys a factory by its source file)."""
    script = scripts / f"{arm}_{abs(hash((config, cache)))}.py"
    script.write_text(ARM.format(root=str(ROOT), config=config, arm=arm, cache=cache))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=1200)
    if done.returncode:
        raise RuntimeError(f"{arm} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def has_mup() -> bool:
    return subprocess.run([sys.executable, "-c", "import mup"], capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()
    results = {}
    for name in args.configs:
        config = CONFIGS[name]
        with tempfile.TemporaryDirectory() as tmp:
            cache_dir, scripts = str(Path(tmp) / "cache"), Path(tmp)
            arms = {"plain": ("plain", False), "ezmup_plus first": ("ezmup", False),
                    "ezmup_plus cached": ("ezmup", cache_dir)}
            if has_mup():
                arms["microsoft/mup"] = ("mup", False)
            run_arm(config, "ezmup", cache_dir, scripts)  # fills the cache the "cached" arm reads
            runs = {label: [] for label in arms}
            for _ in range(args.repeats):  # interleaved, so a change in the machine's load hits every arm alike
                for label, (arm, cache) in arms.items():
                    runs[label].append(run_arm(config, arm, cache, scripts))
        plain = statistics.median(r["seconds"] for r in runs["plain"])
        rows = {}
        for label, rs in runs.items():
            seconds = statistics.median(r["seconds"] for r in rs)
            stages = {k: statistics.median(r["stages"].get(k, 0.0) for r in rs) for k in rs[0]["stages"]}
            rows[label] = {"seconds": round(seconds, 3), "ratio_to_plain": round(seconds / plain, 3),
                           "stages": {k: round(v, 3) for k, v in stages.items()}}
        results[name] = {"width": config[0], "depth": config[1], "base_width": config[2], "vocab": config[3],
                         "device": config[4], "params": runs["plain"][0]["params"], "arms": rows}
        print(f"\n{name}: {results[name]['params'] / 1e6:.1f}M parameters on {config[4]}")
        for label, row in rows.items():
            stages = ", ".join(f"{k} {v:.3f}" for k, v in row["stages"].items())
            print(f"  {label:18s} {row['seconds']:7.3f} s  x{row['ratio_to_plain']:.2f}  {stages}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "build_cost.json"  # configs not run this time keep their last measurement
    kept = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**kept, **results}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
