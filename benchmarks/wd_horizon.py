"""Weight decay across training horizons: the best AdamW weight decay at 1x and 4x steps, the EMA rule vs a constant.

The rule (``ezmup_plus.horizon``, Wang & Aitchison 2024): keep lr*wd*steps, so 4x the steps at the same LR
predicts the best weight decay / 4 (2 octaves lower); the constant rule predicts it unchanged. The setup is one
where weight decay matters on a CPU: a muP MLP (base width 32) on sklearn's digits (1,437 training images,
cross-entropy, so the validation loss rises when the net overfits), AdamW at a fixed LR with a cosine schedule to
zero over the run (the same shape at both horizons), batch 32. 1x is 300 steps (about 7 epochs), 4x is 1,200
steps of the same data (about 27). Per horizon: a log2 grid of weight decays, several seeds; the optimum is the
parabola vertex of the median loss over seeds (``ezmup_plus.diagnostics.optimum``), with a percentile bootstrap
interval over seeds (a seed resampled whole, at both horizons together). Then each rule's weight decay is run
at 4x on every seed.
    python benchmarks/wd_horizon.py --preset cpu
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import parse_preset

import ezmup_plus as ezp
from ezmup_plus.atomic import atomic_write
from ezmup_plus.data import digits
from ezmup_plus.diagnostics import random_batches, train
from ezmup_plus.diagnostics.figures import pyplot, save
from ezmup_plus.diagnostics.optimum import LEVEL, RESAMPLES, Curve, bootstrap_optima, interval, quantile
from ezmup_plus.horizon import MODES, horizon_weight_decay
from ezmup_plus.models.mlp import MLP


def log2_grid(low: float, high: float, step: float) -> list[float]:
    return [low + i * step for i in range(round((high - low) / step) + 1)]


PRESETS = {  # targets: label -> (factor on the steps, factor on the batch size) of the base run
    "smoke": dict(width=64, steps=20, batch=32, targets={"4x steps": (4, 1)}, log2_wds=log2_grid(-4, 0, 1),
                  seeds=[0, 1], lr=2**-7),
    "cpu": dict(width=128, steps=300, batch=32, targets={"4x steps": (4, 1), "4x batch": (0.25, 4)},
                log2_wds=log2_grid(-7, 3, 0.5), seeds=list(range(8)), lr=2**-7),
}
BASE = "1x"


class Cosine:
    """An optimizer whose LR follows a cosine from its value to zero over ``steps`` (what ``train`` steps)."""

    def __init__(self, opt: torch.optim.Optimizer, steps: int):
        self.opt = opt
        cosine = lambda t: 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps))  # noqa: E731
        self.sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.opt.step()
        self.sched.step()


def key(steps: int, batch: int, wd: float, seed: int) -> tuple:
    return (steps, batch, float(f"{wd:.12g}"), seed)


def read_jsonl(path: Path) -> dict[tuple, dict]:
    """The finished runs of an earlier invocation (an unfinished last line is dropped and redone)."""
    if not path.exists():
        return {}
    done = {}
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        done[key(r["steps"], r["batch"], r["weight_decay"], r["seed"])] = r
    with atomic_write(path) as fh:  # the good lines only, so the next record starts on a fresh line
        fh.writelines(json.dumps(r) + "\n" for r in done.values())
    return done


def paired(a: list[float], b: list[float]) -> dict:
    """Mean of a - b paired by seed, with a percentile bootstrap interval over seeds."""
    diff = [x - y for x, y in zip(a, b)]
    rng = random.Random(0)
    boot = [statistics.fmean(rng.choices(diff, k=len(diff))) for _ in range(RESAMPLES)]
    return {"mean": statistics.fmean(diff), "interval": interval(boot)}


def stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "per_seed": values}


def main() -> None:
    preset, cfg, args = parse_preset(__doc__.splitlines()[0], PRESETS)
    torch.set_num_threads(1)  # small models: faster on one thread of a shared 2-core machine
    name = f"wd_horizon_{preset}"
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.out / f"{name}.jsonl"
    if args.fresh and jsonl.exists():
        jsonl.unlink()
    done = read_jsonl(jsonl)
    x, y, xv, yv = digits()
    factory = ezp.wrap(MLP, base_width=32, in_features=64, out_features=10)
    start = time.perf_counter()

    def run(steps: int, batch: int, wd: float, seed: int) -> dict:
        k = key(steps, batch, wd, seed)
        if k not in done:
            torch.manual_seed(seed)
            model = factory(width=cfg["width"])
            opt = ezp.get_mup_optimizer(model, lr=cfg["lr"], optimizer="adamw", weight_decay=wd)
            r = train(model, Cosine(opt, steps), random_batches(x, y, batch, seed), F.cross_entropy, steps, (xv, yv))
            done[k] = {"steps": steps, "batch": batch, "weight_decay": k[2], "seed": seed, "val_loss": r.val_loss,
                       "min_train_loss": r.min_train_loss, "diverged": r.diverged}
            with open(jsonl, "a") as fh:
                fh.write(json.dumps(done[k]) + "\n")
        return done[k]

    score = lambda r: math.inf if r["diverged"] else r["val_loss"]  # noqa: E731
    seeds = cfg["seeds"]
    horizons = {BASE: (cfg["steps"], cfg["batch"])}
    horizons.update({label: (round(cfg["steps"] * fs), round(cfg["batch"] * fb))
                     for label, (fs, fb) in cfg["targets"].items()})
    curves = {}
    for h, (steps, batch) in horizons.items():
        points = [{s: score(run(steps, batch, 2.0**lw, s)) for s in seeds} for lw in cfg["log2_wds"]]
        curves[h] = Curve(tuple(cfg["log2_wds"]), tuple(points))
    no_wd = {h: statistics.fmean(run(*hb, 0.0, s)["val_loss"] for s in seeds) for h, hb in horizons.items()}
    fits = {h: c.fit() for h, c in curves.items()}
    replicates = bootstrap_optima(curves)
    best = {h: f.log2_lr for h, f in fits.items()}  # log2 weight decay (the optimum module calls it log2_lr)

    def optimum(h):
        return {"steps": horizons[h][0], "batch": horizons[h][1], "log2_wd": best[h], "wd": 2 ** best[h],
                "interval_log2": interval([r[h] for r in replicates]), "at_edge": fits[h].at_edge,
                "median_loss_at_best_grid_point": curves[h].medians()[fits[h].best_index]}

    targets = {}
    for h in cfg["targets"]:
        rule_wd = {mode: horizon_weight_decay(2 ** best[BASE], steps=horizons[BASE][0], target_steps=horizons[h][0],
                                              mode=mode) for mode in MODES}
        predicted = {mode: math.log2(wd) for mode, wd in rule_wd.items()}
        ema_shift = predicted["ema"] - predicted["constant"]
        shifts = [r[h] - r[BASE] for r in replicates]
        near = [abs(s - ema_shift) < abs(s) for s in shifts if math.isfinite(s)]
        losses = {mode: [score(run(*horizons[h], wd, s)) for s in seeds] for mode, wd in rule_wd.items()}
        targets[h] = {
            "optimum": optimum(h), "shift_log2": best[h] - best[BASE], "shift_interval_log2": interval(shifts),
            "ema_predicted_shift_log2": ema_shift, "predicted_log2_wd": predicted,
            "nearer": "ema" if abs(best[h] - predicted["ema"]) < abs(best[h] - predicted["constant"]) else "constant",
            "bootstrap_fraction_nearer_ema": statistics.fmean(near) if near else None,
            "val_loss_at_rule_wd": {mode: {"wd": rule_wd[mode], **stats(v)} for mode, v in losses.items()},
            "val_loss_ema_minus_constant": paired(losses["ema"], losses["constant"]),
        }
    summary = {
        "benchmark": name,
        "settings": {"preset": preset, "model": f"muP MLP width {cfg['width']} (base 32), 2 hidden layers",
                     "data": "sklearn digits, 1437 train / 360 val, cross-entropy", "optimizer": "adamw",
                     "wd_mode": "independent (per-step decay lr*wd)", "lr": cfg["lr"],
                     "schedule": "cosine to 0 over the run", "horizons": horizons, "log2_wds": cfg["log2_wds"]},
        "seeds": seeds,
        "seconds": round(time.perf_counter() - start, 1),  # this invocation's training (JSONL runs are free)
        "base": optimum(BASE),
        "targets": targets,
        "val_loss_without_wd": no_wd,
        "grid": {h: [{"log2_wd": lw, "median": quantile(list(p.values()), 0.5), **stats(list(p.values()))}
                     for lw, p in zip(c.log2_lrs, c.scores)] for h, c in curves.items()},
    }
    summary["table"] = table(summary)
    print(summary["table"])
    (args.out / f"{name}.json").write_text(json.dumps(summary, indent=2))
    plot = plot_curves(curves, fits, replicates, summary, args.out / f"{name}.png", name)
    print(f"wrote {args.out / f'{name}.json'}, {jsonl} and {plot}")


def _iv(bounds) -> str:
    return "[-, -]" if bounds is None else f"[{bounds[0]:.2f}, {bounds[1]:.2f}]"


def _wd_line(o: dict) -> str:
    edge = " (grid edge)" if o["at_edge"] else ""
    return (f"{o['log2_wd']:.2f} {_iv(o['interval_log2'])}{edge} (wd {o['wd']:.4g}; {o['steps']} steps of "
            f"{o['batch']})")


def table(s: dict) -> str:
    lines = [f"best weight decay, log2 [{LEVEL:.0%} bootstrap over {len(s['seeds'])} seeds]:",
             f"  {BASE}: {_wd_line(s['base'])}"]
    for h, t in s["targets"].items():
        v, d = t["val_loss_at_rule_wd"], t["val_loss_ema_minus_constant"]
        lines += [
            f"  {h}: {_wd_line(t['optimum'])}",
            f"    shift {t['shift_log2']:+.2f} {_iv(t['shift_interval_log2'])} octaves; ema predicts "
            f"{t['ema_predicted_shift_log2']:+.2f}, constant 0: nearer {t['nearer']} (nearer ema in "
            f"{t['bootstrap_fraction_nearer_ema']:.0%} of resamples)",
            f"    validation loss at each rule's wd (mean +- sd): ema (wd {v['ema']['wd']:.4g}) {v['ema']['mean']:.4f} "
            f"+- {v['ema']['sd'] or 0:.4f}, constant (wd {v['constant']['wd']:.4g}) {v['constant']['mean']:.4f} +- "
            f"{v['constant']['sd'] or 0:.4f}; ema - constant {d['mean']:+.4f} "
            + ("[-, -]" if d["interval"] is None else "[{:+.4f}, {:+.4f}]".format(*d["interval"])),
        ]
    lines.append("without weight decay: " + ", ".join(f"{h} {v:.4f}" for h, v in s["val_loss_without_wd"].items()))
    return "\n".join(lines)


def plot_curves(curves, fits, replicates, summary, path, title) -> Path:
    """Validation loss vs weight decay (median over seeds, interquartile bars), one curve per horizon; diamonds:
    the optima with their bootstrap intervals; dashed: the ema rule's weight decay for each target; dotted: the
    constant rule's (the base optimum)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {}
    for h, c in curves.items():
        steps, batch = summary["settings"]["horizons"][h]
        wds = [2**lw for lw in c.log2_lrs]
        q = [[quantile(list(p.values()), t) for t in (0.25, 0.5, 0.75)] for p in c.scores]
        low, mid, high = ([v if math.isfinite(v) else math.nan for v in col] for col in zip(*q))
        line = ax.errorbar(wds, mid, yerr=[[m - lo for m, lo in zip(mid, low)], [hi - m for m, hi in zip(mid, high)]],
                           marker="o", markersize=3, capsize=2, label=f"{h}: {steps} steps of {batch}").lines[0]
        colors[h] = line.get_color()
        best = fits[h].log2_lr
        iv = interval([r[h] for r in replicates]) or (best, best)
        y = min(v for v in mid if math.isfinite(v))
        ax.errorbar([2**best], [y], xerr=[[2**best - 2 ** iv[0]], [2 ** iv[1] - 2**best]], fmt="D", color=colors[h],
                    markeredgecolor="black", markersize=6, elinewidth=2, capsize=3, zorder=3)
    ax.axvline(2 ** summary["base"]["log2_wd"], color="gray", linestyle=":", label="constant rule's wd (every target)")
    for h, t in summary["targets"].items():
        ax.axvline(2 ** t["predicted_log2_wd"]["ema"], color=colors[h], linestyle="--", label=f"ema rule's wd for {h}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("weight decay (AdamW, per-step decay lr*wd)")
    ax.set_ylabel("validation loss")
    finite = [v for c in curves.values() for p in c.scores for v in p.values() if math.isfinite(v)]
    ax.set_ylim(min(finite) * 0.9, min(max(finite), min(finite) * 2.5))
    ax.legend(fontsize=7)
    ax.set_title(f"{title}: median over seeds, interquartile bars; diamond: optimum, {LEVEL:.0%} bootstrap interval",
                 fontsize=8)
    return save(fig, path)


if __name__ == "__main__":
    main()
