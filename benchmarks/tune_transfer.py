"""The muTransfer headline on this machine: tune on the proxy, train the target untouched, against tuning the target.

Per task (char GPT on Tiny Shakespeare, proxy = the config's base width 32 at depth 2, target 8x = 256 at depth 2;
MLP on California Housing, proxy 16, target 16x = 256), every arm ends at the target width, same steps and batch
as the proxy, and is scored on the target's final validation loss over several seeds:

* ``direct``  (a): the factory as it is (SP config, every knob 1, the config's weight decay), only the LR tuned at
  the target: an octave line search from the config's LR (then half octaves around the best), run until it has
  spent the wall time of the muP proxy search (at least 3 target trials; it stops early once bracketed at a
  quarter octave), so the two budgets match in wall time.
* ``mup``     (b): every knob of the space tuned at the proxy with ``ezp.tune`` (TPE, seeded, median pruner) on
  the muP config, the target trained with best.yaml's values untouched.
* ``sp``      (c): the same procedure on the SP config.
* ``mup_lr``  (d): the muP config with only the LR tuned at the proxy (the same number of trials): what the other
  knobs add.

Compute per arm: trials x estimated FLOPs (6 x parameters x tokens seen, every parameter counted, evaluation
forwards left out; a pruned trial counts the steps it ran) and wall seconds, for the search and for one target
training (for ``direct`` the search's seed-0 run at the best LR is that training). Trials and target runs go
through ``ezmup_plus.trial.run_trial`` (no LR scheduler, as ``sweep`` and ``tune``).
    python benchmarks/tune_transfer.py --preset cpu --jobs 2
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from common import RESULTS, ROOT

import ezmup_plus as ezp
from ezmup_plus.atomic import atomic_write
from ezmup_plus.config import build_factory, load_config, read_yaml
from ezmup_plus.trial import run_trial, task_from
from ezmup_plus.tune import state_counts

TASKS = {
    "gpt": dict(title="char GPT, Tiny Shakespeare", mup="configs/gpt_shakespeare.yaml",
                sp="configs/gpt_shakespeare_sp.yaml", space="configs/spaces/gpt_shakespeare.yaml", multiple=8),
    "mlp": dict(title="MLP, California Housing", mup="configs/mlp_california_mup.yaml",
                sp="configs/mlp_california_sp.yaml", space="configs/spaces/mlp_california.yaml", multiple=16),
}
PRESETS = {  # per task: config overrides (same at proxy and target), proxy trials, target seeds
    "smoke": {"gpt": dict(set=["train.steps=20", "data.val_size=16"], trials=3, seeds=[0, 1], multiple=2),
              "mlp": dict(set=["train.steps=50"], trials=3, seeds=[0, 1], multiple=2)},
    "cpu": {"gpt": dict(set=["data.val_size=256"], trials=40, seeds=[0, 1]),  # the config's 300 steps, batch 16
            "mlp": dict(set=[], trials=30, seeds=[0, 1, 2])},  # the config's 2000 steps, batch 16
    "full": {"gpt": dict(set=["data.val_size=512", "train.steps=2000"], trials=100, seeds=[0, 1, 2]),
             "mlp": dict(set=[], trials=100, seeds=[0, 1, 2, 3, 4])},
}
ARMS = {"direct": "(a) SP defaults, LR tuned at the target", "mup": "(b) muP, all knobs tuned at the proxy",
        "sp": "(c) SP, all knobs tuned at the proxy", "mup_lr": "(d) muP, LR alone tuned at the proxy"}
MIN_DIRECT = 3  # a line search needs three points to know where the optimum is
MIN_STEP = 0.25  # octaves: the line search stops refining there (the loss is flat to noise that close)


class Setup:
    """One task under one preset: its configs' overrides, proxy and target shapes, data and FLOPs per step."""

    def __init__(self, task: str, preset: dict):
        self.task, self.spec, self.preset = task, TASKS[task], preset
        base = load_config(ROOT / self.spec["mup"], preset["set"])
        self.proxy_width, self.depth = base.mup.base_width, base.mup.base_depth
        self.target_width = self.proxy_width * preset.get("multiple", self.spec["multiple"])
        self.overrides = [*preset["set"], f"model.width={self.target_width}"] + (
            [f"model.depth={self.depth}"] if self.depth else [])  # only the width changes between proxy and target
        self.steps, self.batch = base.train.steps, base.train.batch_size
        self.tokens_per_step = self.batch * (base.data.block_size if base.data.name == "tinyshakespeare" else 1)

    def path(self, which: str) -> Path:
        return ROOT / self.spec[which]

    def config(self, which: str, overlays=(), extra=()):
        return load_config(self.path(which), [*self.overrides, *extra], overlays)

    def params(self, factory, width: int) -> int:
        return sum(p.numel() for p in factory(width=width, depth=self.depth).parameters())

    def flops(self, params: int, steps: int) -> float:
        return 6.0 * params * self.tokens_per_step * steps


def target_runs(setup: Setup, cfg, seeds, done: dict | None = None) -> dict:
    """The target trained from each seed with ``cfg`` (runs in ``done`` reused)."""
    factory, task = build_factory(cfg), task_from(cfg)
    runs = dict(done or {})
    for seed in seeds:
        if seed in runs:
            continue
        start = time.perf_counter()
        r = run_trial(factory, cfg, task, setup.target_width, setup.depth, seed)
        runs[seed] = dict(val_loss=r.val_loss, diverged=r.diverged, seconds=round(time.perf_counter() - start, 2))
        print(f"[{setup.task}] target width {setup.target_width} seed {seed}: val {r.val_loss:.4f}", flush=True)
    return runs


def tuned_arm(setup: Setup, arm: str, out: Path, seed: int) -> dict:
    """(b), (c), (d): ``ezp.tune`` at the proxy, then the target with best.yaml untouched."""
    which = "sp" if arm == "sp" else "mup"
    space = read_yaml(setup.path("space"))
    if arm == "mup_lr":
        space = {"optimizer.lr": space["optimizer.lr"]}
    start = time.perf_counter()
    result = ezp.tune(setup.path(which), space, trials=setup.preset["trials"], out=out / arm, study=arm,
                      overrides=setup.overrides, seed=seed, progress=False)
    search_seconds = time.perf_counter() - start
    best = out / arm / "best.yaml"
    cfg = setup.config(which, overlays=[best])
    factory = build_factory(cfg)
    proxy_params, target_params = setup.params(factory, setup.proxy_width), setup.params(factory, setup.target_width)
    trial_steps = [t["last_step"] if t["state"] == "PRUNED" else setup.steps for t in result.trials
                   if t["state"] in ("COMPLETE", "PRUNED")]  # a diverged trial is counted in full (an upper bound)
    states = state_counts(result.trials)
    runs = target_runs(setup, cfg, setup.preset["seeds"])
    return dict(
        arm=arm, config=str(setup.spec[which]), tuned_at=f"proxy width {setup.proxy_width}", knobs=sorted(space),
        best_params=result.best_params, best_yaml=read_yaml(best),
        study=dict(trials=len(result.trials), states=states, best_trial=result.best_trial,
                   best_proxy_val_loss=result.best_value, trial_seconds=sum(t["seconds"] or 0 for t in result.trials)),
        search=dict(trials=len(trial_steps), width=setup.proxy_width, params=proxy_params,
                    flops=sum(setup.flops(proxy_params, s) for s in trial_steps), seconds=round(search_seconds, 1)),
        target=dict(width=setup.target_width, params=target_params, flops=setup.flops(target_params, setup.steps),
                    runs=runs),
    )


def direct_arm(setup: Setup, out: Path, budget_seconds: float) -> dict:
    """(a): the SP config as it is, only the LR searched at the target, until ``budget_seconds`` are spent."""
    base = setup.config("sp")
    factory, task = build_factory(base), task_from(base)
    seen: dict[float, dict] = {}  # log2 LR -> run at seed 0
    start = time.perf_counter()

    def evaluate(x: float) -> None:
        cfg = setup.config("sp", extra=[f"optimizer.lr={2.0 ** x!r}"])
        t = time.perf_counter()
        r = run_trial(factory, cfg, task, setup.target_width, setup.depth, cfg.train.seed)
        seen[x] = dict(val_loss=math.inf if r.diverged else r.val_loss, diverged=r.diverged,
                       seconds=round(time.perf_counter() - t, 2))
        print(f"[{setup.task}] direct: LR 2^{x:g} at width {setup.target_width}: val {r.val_loss:.4f}", flush=True)

    x0, step = math.log2(base.optimizer.lr), 1.0
    while len(seen) < MIN_DIRECT or time.perf_counter() - start < budget_seconds:
        if not seen:
            evaluate(x0)
            continue
        best = min(seen, key=lambda x: seen[x]["val_loss"])
        if best == min(seen) and best - step not in seen:  # the best is the lowest tried: go lower
            evaluate(best - step)
        elif best == max(seen) and best + step not in seen:
            evaluate(best + step)
        elif step > MIN_STEP:  # bracketed: halve the step around the best
            step /= 2
            for x in (best - step, best + step):
                if x not in seen and (len(seen) < MIN_DIRECT or time.perf_counter() - start < budget_seconds):
                    evaluate(x)
        else:  # bracketed at a quarter octave: converged before the budget ran out
            break
    search_seconds = time.perf_counter() - start
    best = min(seen, key=lambda x: seen[x]["val_loss"])
    cfg = setup.config("sp", extra=[f"optimizer.lr={2.0 ** best!r}"])
    params = setup.params(factory, setup.target_width)
    runs = target_runs(setup, cfg, setup.preset["seeds"], done={cfg.train.seed: {**seen[best], "from_search": True}})
    return dict(
        arm="direct", config=str(setup.spec["sp"]), tuned_at=f"target width {setup.target_width}",
        knobs=["optimizer.lr"], best_params={"optimizer.lr": 2.0 ** best},
        best_yaml={"optimizer": {"lr": 2.0 ** best}},
        study=dict(trials=len(seen), budget_seconds=round(budget_seconds, 1),
                   grid={f"2^{x:g}": v for x, v in sorted(seen.items())}),
        search=dict(trials=len(seen), width=setup.target_width, params=params,
                    flops=len(seen) * setup.flops(params, setup.steps), seconds=round(search_seconds, 1)),
        target=dict(width=setup.target_width, params=params, flops=setup.flops(params, setup.steps), runs=runs,
                    note="seed 0 at the best LR is the search's own run: the target training costs nothing more"),
    )


def run_chain(task: str, preset_name: str, arms: list[str], work: str, seed: int, fresh: bool) -> dict:
    """Arms of one task in order, each cached as JSON in ``work`` (a rerun reuses them; the studies resume)."""
    torch.set_num_threads(1)
    setup, out = Setup(task, PRESETS[preset_name][task]), Path(work) / task
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for arm in arms:
        cache = out / f"{arm}.json"
        if cache.exists() and not fresh:
            results[arm] = json.loads(cache.read_text())
            continue
        if arm == "direct":
            mup = results.get("mup") or json.loads((out / "mup.json").read_text())
            results[arm] = direct_arm(setup, out, mup["search"]["seconds"])
        else:
            results[arm] = tuned_arm(setup, arm, out, seed)
        with atomic_write(cache) as fh:
            fh.write(json.dumps(results[arm], indent=2, default=str))
    return results


def summarise(setup: Setup, arm: dict) -> dict:
    runs = list(arm["target"]["runs"].values())
    losses = [r["val_loss"] for r in runs if not r["diverged"]]
    extra = 0 if arm["arm"] == "direct" else 1  # the one target training the user keeps (direct: a search run)
    return dict(
        mean=statistics.fmean(losses) if losses else math.inf,
        sd=statistics.stdev(losses) if len(losses) > 1 else None,
        min=min(losses, default=math.inf), max=max(losses, default=math.inf),
        diverged=len(runs) - len(losses),
        flops=arm["search"]["flops"] + extra * arm["target"]["flops"],
        seconds=arm["search"]["seconds"] + extra * statistics.fmean(r["seconds"] for r in runs),
    )


def table(task: str, setup: Setup, arms: dict) -> str:
    rows = ["| arm | knobs tuned, where | target val loss, mean ± sd [min, max] over seeds | search: trials x FLOPs "
            "| search wall s | search + 1 target training: FLOPs, wall s |", "|---|---|---|---|---|---|"]
    for name, arm in arms.items():
        s, search = arm["summary"], arm["search"]
        sd = f" ± {s['sd']:.4f}" if s["sd"] is not None else ""
        div = f", {s['diverged']} diverged" if s["diverged"] else ""
        knobs = ", ".join(k.split(".")[-1] for k in arm["knobs"])
        rows.append(f"| {ARMS[name]} | {knobs} at {arm['tuned_at']} | {s['mean']:.4f}{sd} [{s['min']:.4f}, "
                    f"{s['max']:.4f}]{div} | {search['trials']} x {search['flops'] / max(search['trials'], 1):.3g} "
                    f"= {search['flops']:.3g} | {search['seconds']:.0f} | {s['flops']:.3g}, {s['seconds']:.0f} |")
    return f"{TASKS[task]['title']}: proxy width {setup.proxy_width}, target {setup.target_width}\n" + "\n".join(rows)


def plot(report: dict, path: Path) -> None:
    from ezmup_plus.diagnostics.figures import pyplot, save

    plt = pyplot()
    tasks = list(report["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    colours = {"direct": "tab:gray", "mup": "tab:blue", "sp": "tab:red", "mup_lr": "tab:cyan"}
    for ax, task in zip(axes[0], tasks):
        for name, arm in report["tasks"][task]["arms"].items():
            s = arm["summary"]
            losses = [r["val_loss"] for r in arm["target"]["runs"].values() if not r["diverged"]]
            ax.errorbar([s["flops"]], [s["mean"]], yerr=[[s["mean"] - s["min"]], [s["max"] - s["mean"]]], fmt="o",
                        capsize=4, color=colours[name], label=f"{ARMS[name]} ({s['seconds']:.0f} s)")
            ax.scatter([s["flops"]] * len(losses), losses, s=10, color=colours[name], alpha=0.5)
        t = report["tasks"][task]
        ax.set(xscale="log", xlabel="compute: search + one target training (estimated FLOPs)",
               ylabel=f"target (width {t['target_width']}) val loss",
               title=f"{TASKS[task]['title']}: tuned at {t['proxy_width']}, trained at {t['target_width']}")
        ax.legend(fontsize=7)
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["gpt", "mlp"])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--jobs", type=int, default=1, help="processes (one thread each) running arms side by side")
    parser.add_argument("--seed", type=int, default=0, help="the TPE sampler's seed")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "tune_transfer",
                        help="studies, best.yaml and per-arm JSON (resumed on a rerun)")
    parser.add_argument("--fresh", action="store_true", help="recompute arms cached in --work")
    args = parser.parse_args()
    if "direct" in args.arms and "mup" not in args.arms:
        parser.error("the direct arm's budget is the mup arm's search time: give --arms with mup too")
    work = args.work / args.preset
    # direct waits for mup's search time (one chain); the other arms go alone; in task order (the GPT's, long, first)
    jobs = [(task, [a for a in ("mup", "direct") if a in args.arms]) for task in args.tasks]
    jobs += [(task, [a]) for task in args.tasks for a in ("sp", "mup_lr") if a in args.arms]
    jobs.sort(key=lambda j: args.tasks.index(j[0]))
    start = time.perf_counter()
    results: dict[str, dict] = {task: {} for task in args.tasks}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [(task, pool.submit(run_chain, task, args.preset, chain, str(work), args.seed, args.fresh))
                   for task, chain in jobs if chain]
        for task, future in futures:
            results[task].update(future.result())
    report = {"benchmark": f"tune_transfer_{args.preset}", "preset": args.preset, "tpe_seed": args.seed,
              "seconds": round(time.perf_counter() - start, 1), "budget_match": "wall time: the direct arm searches "
              "until it has spent the mup arm's proxy-search wall seconds (at least 3 target trials)",
              "flops": "6 x parameters x tokens (batch x block for the GPT, batch rows for the MLP) x steps run",
              "tasks": {}}
    tables = []
    for task in args.tasks:
        setup = Setup(task, PRESETS[args.preset][task])
        arms = {a: results[task][a] for a in ARMS if a in results[task]}
        for arm in arms.values():
            arm["summary"] = summarise(setup, arm)
        report["tasks"][task] = dict(proxy_width=setup.proxy_width, target_width=setup.target_width,
                                     depth=setup.depth, steps=setup.steps, batch_size=setup.batch,
                                     overrides=setup.overrides, trials=setup.preset["trials"],
                                     seeds=setup.preset["seeds"], arms=arms)
        tables.append(table(task, setup, arms))
        report["tasks"][task]["table"] = tables[-1]
    print("\n\n".join(tables))
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"tune_transfer_{args.preset}"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2, default=str))
    plot(report, args.out / f"{name}.png")
    print(f"wrote {args.out / f'{name}.json'} and {args.out / f'{name}.png'} in {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
