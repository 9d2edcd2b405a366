"""The ``ezmup-plus`` command line: inspect a plan, train, sweep, transfer, coordinate-check, export, demo."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import torch
import yaml

from .atomic import atomic_write
from .config import Config, ConfigError, build_factory, build_optimizer, build_scheduler, load_config
from .data import DataUnavailable, lm_batches, lm_loss, load_california_housing, load_cifar10, load_shakespeare_chars
from .diagnostics import analyse, coord_check, geometric_lrs, lr_sweep, plot_sweep, random_batches, train, transfer_table
from .horizon import add_horizon_options, horizon_config


@dataclasses.dataclass(frozen=True)
class Task:
    """What a config trains on: endless batches, a fixed validation batch and the loss."""

    batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]  # seed -> batches
    val: tuple[torch.Tensor, torch.Tensor]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def task_from(cfg: Config) -> Task:
    d, batch = cfg.data, cfg.train.batch_size
    held = slice(d.val_size)  # the first val_size held-out examples, all of them for None
    if d.augment and d.name != "cifar10":
        raise ConfigError(f"data.augment is for images (data.name: cifar10), not data.name={d.name!r}")
    if d.name == "tinyshakespeare":
        train_ids, val_ids, _ = load_shakespeare_chars(d.path)
        return Task(lambda s: lm_batches(train_ids, d.block_size, batch, s),
                    next(lm_batches(val_ids, d.block_size, d.val_size or 64, 1234)), lm_loss)
    if d.name in ("california_housing", "digits", "synthetic"):
        if d.name == "california_housing":
            x, y, xv, yv = load_california_housing(d.path)
        elif d.name == "digits":
            from .demo import digits

            x, y, xv, yv = digits()
        else:
            x, y, xv, yv = _synthetic(cfg.model.kwargs.get("in_features", 8), cfg.model.kwargs.get("out_features", 1))
        loss = torch.nn.functional.cross_entropy if d.name == "digits" else torch.nn.functional.mse_loss
        return Task(lambda s: random_batches(x, y, batch, s), (xv[held], yv[held]), loss)
    if d.name == "cifar10":
        cifar = load_cifar10(d.path)
        print(cifar.described)
        return Task(lambda s: cifar.batches(batch, s, augment=d.augment), (cifar.x_test[held], cifar.y_test[held]),
                    torch.nn.functional.cross_entropy)
    raise ConfigError(f"data.name={d.name!r} is unknown; choose synthetic, digits, california_housing, "
                      "tinyshakespeare or cifar10")


def _synthetic(n_in: int, n_out: int, n: int = 2048) -> tuple[torch.Tensor, ...]:
    """A fixed random teacher: y = tanh(x A) B, so runs need no data files."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, n_in, generator=g)
    y = torch.tanh(x @ torch.randn(n_in, 32, generator=g)) @ torch.randn(32, n_out, generator=g) / 32**0.5
    cut = n * 3 // 4
    return x[:cut], y[:cut], x[cut:], y[cut:]


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


def cmd_inspect(args) -> None:
    cfg = load_config(args.config, args.set)
    factory = build_factory(cfg)
    print(factory.plan(width=cfg.model.width, depth=cfg.model.depth))


def cmd_train(args) -> None:
    """Train through the Accelerate engine (one process, or each process of a torchrun / accelerate launch)."""
    from .engine import Engine

    cfg = load_config(args.config, args.set)
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
        torch.manual_seed(seed)
        model = factories[parametrization](width=width, depth=depth)
        opt = build_optimizer(model, dataclasses.replace(cfg, optimizer=dataclasses.replace(cfg.optimizer, lr=lr)))
        return train(model, opt, task.batches(seed), task.loss, cfg.train.steps, task.val)

    return lr_sweep(run, widths=widths, lrs=lrs, seeds=args.seeds, parametrizations=parametrizations,
                    depths=[cfg.model.depth], jsonl_path=jsonl)


def cmd_sweep(args) -> None:
    cfg = load_config(args.config, args.set)
    runs = _sweep(cfg, args, args.widths, geometric_lrs(*args.lr_range), args.parametrizations)
    transfers = [analyse(runs, p) for p in args.parametrizations]
    print(transfer_table(transfers))
    if args.out:
        results = args.out / "sweep.json"
        with atomic_write(results) as fh:
            json.dump({t.parametrization: t.to_dict() for t in transfers}, fh, indent=2)
        print(f"results: {results}; plot: {plot_sweep(runs, args.out / 'sweep.png', transfers=transfers)}")


def cmd_transfer(args) -> None:
    """Tune the LR at the config's base width, then train at its target width with it."""
    cfg = load_config(args.config, args.set)
    base = cfg.mup.base_width or cfg.model.width
    tuned = analyse(_sweep(cfg, args, [base], geometric_lrs(*args.lr_range), [cfg.mup.parametrization]),
                    cfg.mup.parametrization).optima[base]
    if math.isnan(tuned.log2_lr):
        raise ValueError(f"every run at the base width {base} diverged: no LR to transfer; lower --lr-range")
    target_cfg, horizon = horizon_config(cfg, steps=args.steps, batch_size=args.batch_size, mode=args.wd_horizon)
    same = target_cfg == cfg  # another horizon's target runs are not logged (the log's keys have no steps or wd)
    target = _sweep(target_cfg, args if same else argparse.Namespace(**{**vars(args), "out": None}),
                    [cfg.model.width], [tuned.lr], [cfg.mup.parametrization])
    losses = ", ".join(f"{r.val_loss:.4f}" for r in target)
    print(f"best LR at base width {base}: {tuned.describe()}; at width {cfg.model.width} with it ({horizon}): "
          f"validation loss {losses} (seeds {', '.join(map(str, args.seeds))})")


def cmd_coord_check(args) -> None:
    cfg = load_config(args.config, args.set)
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

    cfg = load_config(args.config, args.set)
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
    elif isinstance(exc, (ValueError, OSError, DataUnavailable, yaml.YAMLError)):  # the library's own checks
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
    add_horizon_options(p)  # the transfer command's: the target's steps and batch size, the weight-decay rule
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
