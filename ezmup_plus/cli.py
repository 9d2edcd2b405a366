"""The ``ezmup-plus`` command line: inspect a plan, train, sweep, tune, transfer, coordinate-check, export, demo."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from .atomic import atomic_write
from .config import Config, ConfigError, build_factory, build_optimizer, build_scheduler, load_config, read_yaml
from .data import DataUnavailable
from .diagnostics import analyse, coord_check, geometric_lrs, lr_sweep, plot_sweep, transfer_table
from .horizon import DEFAULT_MODE, MODES, horizon_config
from .trial import run_trial, task_from
from .tune import PRUNERS, OptunaMissing, storage_spec, tune


def _out_dir(path: Path) -> Path:
    """Create the output directory and prove it writable now, not after the work whose results go there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror} (no output can be written there)", exc.filename) from exc
    return path


def _train_out(args) -> Path:
    return args.out or Path("runs") / Path(args.config).stem


def _tune_out(args) -> Path:
    return args.out or Path("runs") / "tune" / Path(args.config).stem


def _config(args) -> Config:
    """The command's config: the file, its --overlay files merged over it, then the --set overrides."""
    return load_config(args.config, args.set, args.overlay)


def cmd_inspect(args) -> None:
    cfg = _config(args)
    factory = build_factory(cfg)
    print(factory.plan(width=cfg.model.width, depth=cfg.model.depth))


def cmd_train(args) -> None:
    """Train through the Accelerate engine (one process, or each process of a torchrun / accelerate launch)."""
    from .engine import Engine

    cfg = _config(args)
    out = _out_dir(_train_out(args))
    task = task_from(cfg)
    with Engine(cfg.train) as engine:
        torch.manual_seed(cfg.train.seed)
        model = build_factory(cfg)(width=cfg.model.width, depth=cfg.model.depth, device=engine.device)
        opt = build_optimizer(model, cfg)
        sched = build_scheduler(opt, cfg)
        result = engine.fit(model, opt, sched, task.batches(cfg.train.seed), task.loss, task.val, out,
                            resume=args.resume)
    if torch.distributed.is_initialized():  # gloo's threads can abort the interpreter's teardown (pytorch#179291)
        torch.distributed.destroy_process_group()
    if engine.is_main_process:
        print(f"final train loss {result['train'][-1]['loss']:.4f}, validation loss {result['val_loss']:.4f} "
              f"({engine.num_processes} process{'es' if engine.num_processes > 1 else ''}); wrote {out}")


def _sweep(cfg: Config, args, widths, lrs, parametrizations) -> list:
    jsonl = _out_dir(args.out) / "sweep.jsonl" if args.out else None
    task = task_from(cfg)
    factories = {p: build_factory(dataclasses.replace(cfg, mup=dataclasses.replace(cfg.mup, parametrization=p)))
                 for p in parametrizations}

    def run(parametrization, width, depth, lr, seed):
        at_lr = dataclasses.replace(cfg, optimizer=dataclasses.replace(cfg.optimizer, lr=lr))
        return run_trial(factories[parametrization], at_lr, task, width, depth, seed)

    return lr_sweep(run, widths=widths, lrs=lrs, seeds=args.seeds, parametrizations=parametrizations,
                    depths=[cfg.model.depth], jsonl_path=jsonl)


def cmd_sweep(args) -> None:
    cfg = _config(args)
    runs = _sweep(cfg, args, args.widths, geometric_lrs(*args.lr_range), args.parametrizations)
    transfers = [analyse(runs, p) for p in args.parametrizations]
    print(transfer_table(transfers))
    if args.out:
        results = args.out / "sweep.json"
        with atomic_write(results) as fh:
            json.dump({t.parametrization: t.to_dict() for t in transfers}, fh, indent=2)
        print(f"results: {results}; plot: {plot_sweep(runs, args.out / 'sweep.png', transfers=transfers)}")


def cmd_tune(args) -> None:
    """An Optuna study on the config's proxy; its best.yaml is an overlay for train, sweep and transfer."""
    tune(args.config, args.space, trials=args.trials, storage=args.storage, workers=args.workers, study=args.study,
         out=_out_dir(_tune_out(args)), pruner=args.pruner, seed=args.seed, overrides=args.set,
         overlays=args.overlay, eval_every=args.eval_every)


def cmd_transfer(args) -> None:
    """Tune the LR at the config's base width, then train at its target width (and horizon) with it; an overlay that
    sets the LR (tune's best.yaml) is used as it is."""
    cfg = _config(args)
    if any("lr" in (read_yaml(path).get("optimizer") or {}) for path in args.overlay):
        lr, source = cfg.optimizer.lr, f"optimizer.lr={cfg.optimizer.lr:.4g} from the overlay, not tuned again"
    else:
        base = cfg.mup.base_width or cfg.model.width
        tuned = analyse(_sweep(cfg, args, [base], geometric_lrs(*args.lr_range), [cfg.mup.parametrization]),
                        cfg.mup.parametrization).optima[base]
        if math.isnan(tuned.log2_lr):
            raise ValueError(f"every run at the base width {base} diverged: no LR to transfer; lower --lr-range")
        lr, source = tuned.lr, f"best LR at base width {base}: {tuned.describe()}"
    target_cfg, horizon = horizon_config(cfg, steps=args.steps, batch_size=args.batch_size, mode=args.wd_horizon)
    same = target_cfg == cfg  # another horizon's target runs are not logged (the log's keys have no steps or wd)
    target = _sweep(target_cfg, args if same else argparse.Namespace(**{**vars(args), "out": None}),
                    [cfg.model.width], [lr], [cfg.mup.parametrization])
    losses = ", ".join(f"{r.val_loss:.4f}" for r in target)
    print(f"{source}; at width {cfg.model.width} with it ({horizon}): validation loss {losses} "
          f"(seeds {', '.join(map(str, args.seeds))})")


def cmd_coord_check(args) -> None:
    cfg = _config(args)
    if args.out:
        _out_dir(args.out)
    task = task_from(cfg)
    check = coord_check(build_factory(cfg), args.widths, next(task.batches(0)), loss_fn=task.loss,
                        steps=args.steps, optimizer=cfg.optimizer.name, lr=cfg.optimizer.lr, seeds=args.seeds)
    print(check)
    if args.out:
        print(f"plot: {check.plot(args.out / 'coord_check.png')}")
    if not check.ok:
        sys.exit(1)


def cmd_export(args) -> None:
    """Load a training checkpoint into the config's model and save the plain factory's state dict."""
    from .checkpoint import load_checkpoint
    from .export import export_standard

    cfg = _config(args)
    _out_dir(args.out.parent)
    model = build_factory(cfg)(width=cfg.model.width, depth=cfg.model.depth)
    load_checkpoint(args.checkpoint, model)
    with atomic_write(args.out, "wb") as fh:
        torch.save(export_standard(model), fh)
    print(f"wrote {args.out}: load it with {cfg.model.factory}(...).load_state_dict(torch.load(path))")


def cmd_demo(args) -> None:
    from .demo import main as demo

    demo(args.rest)


def _kept(args) -> str:
    """What an interrupted command leaves: the last complete file it wrote (every write is atomic), if any."""
    if args.command == "train":
        says, path = "the last complete checkpoint is kept at", _train_out(args) / "checkpoint.pt"
    elif args.command in ("sweep", "transfer") and args.out:
        says, path = "the log line of every finished run is kept in", args.out / "sweep.jsonl"
    elif args.command == "tune":
        return (f"the finished trials are kept in {storage_spec(args.storage, _tune_out(args), args.workers)}; "
                "run it again to top up to --trials")
    elif args.command == "export":
        says, path = "the previous export is kept at", args.out
    else:
        return "nothing was written"
    return f"{says} {path}" if path.exists() else "nothing was written"


def _user_error(exc: BaseException, args) -> str | None:
    """The one line a user's mistake or Ctrl-C becomes at the command line; None for anything else (a bug
    keeps its traceback)."""
    if isinstance(exc, KeyboardInterrupt):
        text = f"interrupted; {_kept(args)}"
    elif isinstance(exc, ConfigError):
        text = f"config error: {exc}"
    elif isinstance(exc, OSError) and exc.filename is not None:  # a missing, unreadable or unwritable path
        where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else exc.filename
        text = f"{where}: {exc.strerror}"
    elif isinstance(exc, (ValueError, OSError, DataUnavailable, yaml.YAMLError, OptunaMissing)):  # the library's checks
        text = str(exc)
    elif isinstance(exc, (LookupError, TypeError)):
        text = f"{type(exc).__name__}: {exc} (--debug shows where)"
    else:
        return None
    return "ezmup-plus: " + re.sub(r"\s*\n\s*", " ", text.strip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ezmup-plus", description="muP for any PyTorch model factory")
    debug_help = "show the full traceback instead of a one-line error"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, fn, help_text, config=True):
        p = commands.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)  # after it too
        if config:
            p.add_argument("config", help="YAML config (see configs/)")
            p.add_argument("--overlay", action="append", default=[], type=Path, metavar="FILE",
                           help="YAML merged over the config before --set, e.g. tune's best.yaml (repeatable)")
            p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="dotted override, e.g. --set model.width=1024 (repeatable)")
        p.set_defaults(fn=fn)
        return p

    command("inspect", cmd_inspect, "print the per-tensor plan: symbolic shapes, roles, multipliers")
    p = command("train", cmd_train, "train a config on Accelerate (1 process, or under torchrun / accelerate launch); "
                "loss log (CSV, JSON) and checkpoint in --out")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    for name, fn, text in (("sweep", cmd_sweep, "LR sweep over widths: best LR and drift with intervals, regret"),
                           ("transfer", cmd_transfer, "tune the LR at the base width, train at the target with it")):
        p = command(name, fn, text)
        p.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
        p.add_argument("--lr-range", type=float, nargs=2, default=[2**-12, 2**-4], metavar=("LOW", "HIGH"))
        p.add_argument("--seeds", type=int, nargs="+", default=[0],
                       help="two or more give bootstrap intervals on the best LR and the drift")
        p.add_argument("--parametrizations", nargs="+", default=["sp", "mup"])
        p.add_argument("--out", type=Path, default=None)
        if name == "transfer":  # the target's horizon: its steps and batch size, the weight-decay rule (horizon.py)
            p.add_argument("--steps", type=int, default=None, help="the target's optimizer steps (default: the "
                           "config's train.steps, or the same samples at --batch-size)")
            p.add_argument("--batch-size", type=int, default=None,
                           help="the target's batch size (default: the config's)")
            p.add_argument("--wd-horizon", choices=MODES, default=DEFAULT_MODE, help="weight decay for the target's "
                           "horizon: ema keeps lr*wd*steps (Wang & Aitchison 2024), constant keeps wd (default: "
                           f"{DEFAULT_MODE}, see the README)")
    p = command("tune", cmd_tune, "Optuna search of --space on the config's proxy (its base width and depth); "
                "best.yaml, trials.csv and plots in --out")
    p.add_argument("--space", type=Path, required=True, help="YAML: dotted key -> {low, high, log} | "
                   "{low, high, int: true} | {choices: [...]} (see configs/spaces/)")
    p.add_argument("--trials", type=int, required=True, help="finished trials the study should hold (a rerun tops up)")
    p.add_argument("--storage", default=None, help="an Optuna URL (sqlite:///..., postgresql://...) or a journal "
                   "file (journal:PATH or PATH.log); default: study.db (study.log with --workers > 1) in --out")
    p.add_argument("--workers", type=int, default=1, help="local worker processes on the one study")
    p.add_argument("--study", default=None, help="study name (default: the config's file stem)")
    p.add_argument("--pruner", choices=PRUNERS, default="median")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    p.add_argument("--eval-every", type=int, default=None, help="steps between the validation losses the pruner "
                   "sees (default: a tenth of train.steps)")
    p.add_argument("--out", type=Path, default=None, help="default: runs/tune/<config stem>")
    p = command("coord-check", cmd_coord_check, "activation RMS vs width after a few steps; exit 1 on failure")
    p.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--seeds", type=int, default=4, help="RMS averaged over this many seeded builds per width")
    p.add_argument("--out", type=Path, default=None)
    p = command("export", cmd_export, "a training checkpoint as a plain state dict (muP multipliers folded in)")
    p.add_argument("checkpoint", type=Path, help="checkpoint.pt written by 'train'")
    p.add_argument("--out", type=Path, required=True)
    p = command("demo", cmd_demo, "the muTransfer demonstration on sklearn's digits (no download)", config=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the demo (see 'demo -- --help')")
    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except (Exception, KeyboardInterrupt) as exc:
        message = None if args.debug else _user_error(exc, args)
        if message is None:
            raise
        parser.exit(2, message + "\n")


if __name__ == "__main__":
    main()
