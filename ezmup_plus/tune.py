"""Hyperparameter search on the proxy with Optuna: ``ezp.tune`` and ``ezmup-plus tune``.

The muTransferable knobs (``optimizer.*``, ``mup.hparams.*``) are plan inputs defined at the base width, so a
trial samples them, plans and builds at the proxy (the config's base width and depth) and trains with the runner
``sweep`` uses; the factory is analysed once per worker process, never per trial. The study lives in an Optuna
storage: a rerun resumes it and tops it up to ``trials`` finished trials, and worker processes (or machines) share
it. The result is ``best.yaml``, an overlay of the best trial's values that ``train``, ``sweep`` and ``transfer``
take with ``--overlay``. Optuna is an optional extra, imported only when a study runs.
"""

from __future__ import annotations

import copy
import csv
import math
import multiprocessing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from tqdm.auto import tqdm

from .atomic import atomic_write
from .config import Config, ConfigError, build_factory, config_data, load_config, read_yaml, set_key
from .trial import run_trial, task_from

SECTIONS = ("optimizer.", "mup.hparams.")  # what a trial may change without another analysis or another task
PRUNERS = ("median", "halving", "none")
FINISHED = ("COMPLETE", "PRUNED")  # the states that count toward the number of trials asked for
FIELDS = ("low", "high", "log", "int", "choices")


class OptunaMissing(ImportError):
    """``tune`` without Optuna installed (it is the ``tune`` extra, not a core dependency)."""


def _optuna():
    try:
        import optuna
    except ImportError:
        raise OptunaMissing("tune needs Optuna: pip install 'ezmup_plus[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar and the table say it once
    return optuna


@dataclass(frozen=True)
class Knob:
    """One key of the space: a float or integer range (``log`` samples log-uniformly) or a list of choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    int: bool = False
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """Optuna's value for this trial (a list-valued choice travels as its YAML text: Optuna stores scalars)."""
        if self.choices:
            return trial.suggest_categorical(self.key, [_scalar(c) for c in self.choices])
        if self.int:
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def value(self, sampled: Any) -> Any:
        """The config value of what Optuna sampled."""
        return next((c for c in self.choices if _scalar(c) == sampled), sampled)

    def corners(self) -> tuple:
        """The values that must all make a valid config: the ends of the range, or every choice."""
        return self.choices or (self.low, self.high)


def _scalar(choice: Any) -> Any:
    return yaml.safe_dump(choice, default_flow_style=True).strip() if isinstance(choice, (list, dict)) else choice


def load_space(space: str | Path | Mapping) -> dict[str, Knob]:
    """The knobs of a space file or mapping (safe YAML); a malformed entry is a ``ConfigError`` naming its key."""
    data = read_yaml(space) if isinstance(space, (str, Path)) else dict(space)
    if not data:
        raise ConfigError(f"the space {space} is empty; give keys such as optimizer.lr: {{low: 1.0e-4, high: 0.1, "
                          "log: true}")
    return {str(key): _knob(str(key), spec) for key, spec in data.items()}


def _knob(key: str, spec: Any) -> Knob:
    where = f"space key '{key}'"
    if not key.startswith(SECTIONS):
        raise ConfigError(f"{where}: tune samples {' and '.join(s + '*' for s in SECTIONS)} only (other keys would "
                          "change the model's analysis or the data); set them in the config")
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: give {{low, high, log: true}}, {{low, high, int: true}} or {{choices: [...]}}, "
                          f"not {spec!r}")
    unknown = sorted(set(map(str, spec)) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; the fields are {', '.join(FIELDS)}")
    if "choices" in spec:
        choices = spec["choices"]
        if len(spec) > 1:
            raise ConfigError(f"{where}: 'choices' takes no {', '.join(k for k in spec if k != 'choices')}")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, got {choices!r}")
        return Knob(key, choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: needs low and high (or choices)")
    for flag in ("log", "int"):
        if not isinstance(spec.get(flag, False), bool):
            raise ConfigError(f"{where}: {flag} must be true or false, got {spec[flag]!r}")
    is_int, log = spec.get("int", False), spec.get("log", False)
    low, high = (_number(spec[name], is_int, f"{where}: {name}") for name in ("low", "high"))
    if not low < high:
        raise ConfigError(f"{where}: the range is empty: low={low!r} must be below high={high!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: log: true needs low > 0, got low={low!r}")
    return Knob(key, low if is_int else float(low), high if is_int else float(high), log, is_int)


def _number(value: Any, is_int: bool, where: str) -> float | int:
    """A bound as a number; text that is one counts (YAML 1.1 reads 1e-4 and 1.0e3 as text)."""
    if isinstance(value, str) and not is_int:
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int if is_int else (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}={value!r} must be a finite {'integer' if is_int else 'number'}")
    return value


def trial_config(base: Mapping, params: Mapping[str, Any]) -> Config:
    """``base`` (a config mapping) with each dotted key set, type-checked as ``--set`` would be."""
    data = copy.deepcopy(dict(base))
    for key, value in params.items():
        set_key(data, key, value)
    return load_config(data)


def check_space(base: Mapping, knobs: Mapping[str, Knob]) -> None:
    """Every end of every range (and every choice) applied to the config alone, so a bad key or value is an error
    naming it before the first trial, not a failed trial."""
    for knob in knobs.values():
        for value in knob.corners():
            try:
                trial_config(base, {knob.key: value})
            except ConfigError as exc:
                raise ConfigError(f"space key '{knob.key}' = {value!r}: {exc}") from None


def proxy(cfg: Config) -> tuple[int, int | None]:
    """Where trials train: the base width and depth, where the knobs are defined (the target is model.width)."""
    return cfg.mup.base_width or cfg.model.width, cfg.mup.base_depth


def storage_spec(storage: str | None, out: Path, workers: int) -> str:
    """The study's storage as text every worker can open: ``storage`` as given, else a study file in ``out``.

    An existing study file is reused (a rerun finds its study); a new one is SQLite (``study.db``) for one worker
    and a journal file (``study.log``) for several, because SQLite with many writers is fragile.
    """
    if storage:
        return storage
    sqlite, journal = Path(out).resolve() / "study.db", Path(out).resolve() / "study.log"
    if journal.exists() or (workers > 1 and not sqlite.exists()):
        return f"journal:{journal}"
    return f"sqlite:///{sqlite}"


def open_storage(spec: str):
    """An Optuna storage: ``journal:PATH`` or a path ending ``.log`` is a journal file (one machine or a shared file
    system), anything else an Optuna URL (``sqlite:///...``, ``postgresql://...`` for many machines)."""
    optuna = _optuna()
    path = spec.removeprefix("journal:") if spec.startswith("journal:") or spec.endswith(".log") else None
    if path is None:
        return spec
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(path))


def _pruner(name: str):
    optuna = _optuna()
    return {"median": optuna.pruners.MedianPruner, "halving": optuna.pruners.SuccessiveHalvingPruner,
            "none": optuna.pruners.NopPruner}[name]()


@dataclass(frozen=True)
class TuneResult:
    """What a study found, as plain data: the best trial and one row per trial (what trials.csv holds)."""

    study: str
    storage: str
    out: Path
    best_trial: int
    best_value: float
    best_params: dict  # dotted key -> config value; best.yaml nests them
    trials: list  # rows: number, state, value, diverged, worker, seconds, last_step, params


def tune(config: str | Path | Mapping, space: str | Path | Mapping, *, trials: int, storage: str | None = None,
         workers: int = 1, study: str | None = None, out: str | Path | None = None, pruner: str = "median",
         seed: int = 0, overrides: Sequence[str] = (), overlays: Sequence[str | Path] = (),
         eval_every: int | None = None, progress: bool = True) -> TuneResult:
    """Search ``space`` on ``config``'s proxy until the study holds ``trials`` finished (complete or pruned) trials.

    TPE (seeded) proposes; ``pruner`` stops a trial whose validation loss every ``eval_every`` steps (default a tenth
    of ``train.steps``) is behind; a diverged trial (``RunResult.diverged``, as in ``sweep``) completes with value inf
    and the user attribute ``diverged``. ``workers`` > 1: this process and ``workers - 1`` spawned ones on one study.
    Writes ``best.yaml``, ``trials.csv`` and PNG plots in ``out`` (default ``runs/tune/<config stem>``).
    """
    optuna = _optuna()
    for name, value in (("trials", trials), ("workers", workers)):
        if value < 1:
            raise ValueError(f"{name}={value} must be at least 1")
    if pruner not in PRUNERS:
        raise ValueError(f"pruner={pruner!r} is unknown; choose from {', '.join(PRUNERS)}")
    base = config_data(config, overrides, overlays)
    cfg = load_config(base)
    raw_space = read_yaml(space) if isinstance(space, (str, Path)) else dict(space)
    knobs = load_space(raw_space)
    check_space(base, knobs)
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"eval_every={eval_every} must be at least 1")
    stem = Path(config).stem if isinstance(config, (str, Path)) else "tune"
    study, out = study or stem, Path(out) if out is not None else Path("runs") / "tune" / stem
    out.mkdir(parents=True, exist_ok=True)
    spec = storage_spec(storage, out, workers)
    if workers > 1 and spec.startswith("sqlite:"):
        print(f"note: {workers} workers share the SQLite file {spec}; for many writers a journal file is safer "
              "(--storage journal:PATH)")
    found = optuna.create_study(study_name=study, storage=open_storage(spec), direction="minimize",
                                load_if_exists=True).get_trials(deepcopy=False)
    remaining = max(0, trials - sum(t.state.name in FINISHED for t in found))
    width, depth = proxy(cfg)
    print(f"study {study!r} in {spec}: {len(found)} trial(s) there, {remaining} to run on "
          f"{min(workers, remaining)} worker(s); each trains width {width}" + (f", depth {depth}" if depth else "") +
          f" for {cfg.train.steps} steps")
    job = {"config": base, "space": raw_space, "storage": spec, "study": study, "pruner": pruner,
           "eval_every": eval_every or max(1, cfg.train.steps // 10), "progress": progress}
    shares = [remaining // workers + (i < remaining % workers) for i in range(workers)]
    _run([{**job, "worker": i, "trials": n, "seed": _seed(seed, i, len(found))} for i, n in enumerate(shares) if n])
    return _report(optuna.load_study(study_name=study, storage=open_storage(spec)), knobs, spec, out)


def _seed(seed: int, worker: int, start: int) -> int:
    """The sampler seed of one worker of one run: reproducible, but different per worker and per resumption (a
    resumed study must not draw its first random trials again)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, worker, start]).generate_state(1)[0])


def _run(jobs: list[dict]) -> None:
    """The first job in this process, the others in spawned processes on the same study."""
    procs = [multiprocessing.get_context("spawn").Process(target=_work, args=(job,), name=f"tune worker {job['worker']}")
             for job in jobs[1:]]
    for p in procs:
        p.start()
    try:
        if jobs:
            _work(jobs[0])
    except BaseException:
        for p in procs:
            p.terminate()
        raise
    finally:
        for p in procs:
            p.join()
    failed = [f"{p.name} (exit code {p.exitcode})" for p in procs if p.exitcode]
    if failed:
        raise RuntimeError(f"{', '.join(failed)} stopped with an error; its traceback is above")


def _work(job: dict) -> None:
    """One worker: the factory analysed and the data loaded once, then its share of trials on the shared study."""
    optuna = _optuna()
    base, knobs = job["config"], load_space(job["space"])
    cfg = load_config(base)
    factory, task = build_factory(cfg), task_from(cfg)
    width, depth = proxy(cfg)

    def objective(trial) -> float:
        trial.set_user_attr("worker", job["worker"])
        values = {key: knob.value(knob.suggest(trial)) for key, knob in knobs.items()}
        trial_cfg = trial_config(base, values)

        def on_eval(step: int, val_loss: float) -> None:
            if math.isfinite(val_loss):
                trial.report(val_loss, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation loss {val_loss:.4g} at step {step}")

        result = run_trial(factory.with_hparams(trial_cfg.mup.hparams), trial_cfg, task, width, depth,
                           trial_cfg.train.seed, on_eval, job["eval_every"])
        trial.set_user_attr("diverged", result.diverged)
        return math.inf if result.diverged else result.val_loss

    study = optuna.load_study(study_name=job["study"], storage=open_storage(job["storage"]),
                              sampler=optuna.samplers.TPESampler(seed=job["seed"]), pruner=_pruner(job["pruner"]))
    desc = "tune" if job["worker"] == 0 else f"tune worker {job['worker']}"
    with tqdm(total=job["trials"], desc=desc, position=job["worker"], disable=not job["progress"], leave=False) as bar:
        study.optimize(objective, n_trials=job["trials"], callbacks=[lambda *_: bar.update()])


def _report(study, knobs: Mapping[str, Knob], spec: str, out: Path) -> TuneResult:
    """trials.csv, the table, best.yaml and the plots of a study; an error when no trial has a finite loss."""
    frozen = study.get_trials(deepcopy=False)
    rows = [_row(t) for t in frozen]
    keys = list(dict.fromkeys([*knobs, *(k for r in rows for k in r["params"])]))  # a changed space keeps old keys
    with atomic_write(out / "trials.csv", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["number", "state", "value", "diverged", "worker", "seconds", "last_step", *keys])
        for r in rows:
            writer.writerow([r["number"], r["state"], r["value"], r["diverged"], r["worker"], r["seconds"],
                             r["last_step"], *(r["params"].get(k) for k in keys)])
    print(table(rows, keys))
    good = [t for t in frozen if t.state.name == "COMPLETE" and math.isfinite(t.value)]
    if not good:
        raise ValueError(f"no trial of study {study.study_name!r} finished with a finite validation loss "
                         f"({len(rows)} trials, see {out / 'trials.csv'}); narrow the space (a lower LR range)")
    best = min(good, key=lambda t: t.value)
    params = {k: knobs[k].value(v) if k in knobs else v for k, v in best.params.items()}
    nested: dict = {}
    for key, value in params.items():
        set_key(nested, key, value)
    with atomic_write(out / "best.yaml") as fh:
        fh.write(f"# trial {best.number} of study {study.study_name!r} ({spec}): validation loss {best.value!r}\n"
                 f"# an overlay: ezmup-plus train|sweep|transfer CONFIG --overlay {out / 'best.yaml'}\n")
        yaml.safe_dump(nested, fh, sort_keys=False)
    plots = _plots(study, len(good), list(knobs), out)
    print(f"best: trial {best.number}, validation loss {best.value:.4g}: "
          + ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
          + f"\nwrote {out / 'best.yaml'}, {out / 'trials.csv'}" + "".join(f", {p}" for p in plots))
    return TuneResult(study.study_name, spec, out, best.number, best.value, params, rows)


def _row(t) -> dict:
    return {"number": t.number, "state": t.state.name, "value": t.value,
            "diverged": bool(t.user_attrs.get("diverged", False)), "worker": t.user_attrs.get("worker"),
            "seconds": t.duration.total_seconds() if t.duration else None, "last_step": t.last_step,
            "params": dict(t.params)}


def table(rows: Sequence[Mapping], keys: Sequence[str], top: int = 10) -> str:
    """The ``top`` best trials (finite losses first, then diverged, pruned, the rest) and a count of the states."""
    rank = {"COMPLETE": 0, "PRUNED": 1}

    def order(r):
        value = r["value"] if r["value"] is not None else math.inf
        return (rank.get(r["state"], 2) + r["diverged"] * 0.5, value, r["number"])

    lines = [["trial", "state", "val_loss", *keys]]
    for r in sorted(rows, key=order)[:top]:
        state = "DIVERGED" if r["diverged"] else r["state"]
        value = "-" if r["value"] is None or r["diverged"] else f"{r['value']:.4f}"
        if r["state"] == "PRUNED" and r["value"] is not None:
            value += f" @{r['last_step']}"  # the loss it was pruned at, at that step
        lines.append([str(r["number"]), state, value, *(_fmt(r["params"].get(k)) for k in keys)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    counts = state_counts(rows)
    tally = f"{len(rows)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    if "running" in counts:
        tally += " (left by a stopped run; they do not count toward --trials)"
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines) + "\n" + tally


def state_counts(rows: Sequence[Mapping]) -> dict[str, int]:
    """How many trials ended in each state, a diverged trial counted as ``diverged`` (not ``complete``)."""
    counts: dict[str, int] = {}
    for r in rows:
        state = "diverged" if r["diverged"] else r["state"].lower()
        counts[state] = counts.get(state, 0) + 1
    return counts


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _plots(study, finished: int, keys: Sequence[str], out: Path) -> list[Path]:
    """Optimization history, slices and (two or more knobs, two or more finished trials) importances as PNG; Optuna
    leaves out the diverged trials (their loss is inf)."""
    try:
        from .diagnostics.figures import pyplot

        plt = pyplot()  # the Agg backend before Optuna imports pyplot
        from optuna.visualization import matplotlib as vis
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install 'ezmup_plus[plots]')")
        return []
    optuna = _optuna()
    plots = {"history": vis.plot_optimization_history, "slice": vis.plot_slice}
    if finished >= 2 and len(keys) >= 2:
        plots["importances"] = vis.plot_param_importances
    written = []
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # not one line per diverged trial left out
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)  # matplotlib on a knob that took one value only
            for name, plot in plots.items():
                axes = plot(study)
                fig = getattr(axes, "flat", [axes])[0].figure  # plot_slice: an array of Axes for several knobs
                fig.savefig(out / f"{name}.png", dpi=90, bbox_inches="tight")  # tight_layout fails beside colour bars
                plt.close(fig)
                written.append(out / f"{name}.png")
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    return written
