"""YAML configs: width, depth, optimizer and parametrization are one-line swaps.

Safe loading only (``yaml.safe_load``), ``extends:`` for inheritance, dotted overrides
(``model.width=1024``), and typed sections whose unknown keys and wrong types are errors that name
the key path and suggest the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch
import yaml

from .hparams import HParams


class ConfigError(ValueError):
    """A config that cannot be used as written; the message names the key and what to do."""


@dataclass
class ModelConfig:
    factory: str  # "package.module:callable"
    kwargs: dict = field(default_factory=dict)
    width: int | None = None
    depth: int | None = None
    width_multiple: int = 1
    width_arg: str = "width"
    depth_arg: str = "depth"


@dataclass
class MupConfig:
    base_width: int | None = None  # defaults to model.width
    base_depth: int | None = None
    parametrization: str = "mup"
    sentinel: int = 47
    depth_alpha: float | None = None
    roles: dict = field(default_factory=dict)
    branches: list | None = None
    attn_scale: str = "auto"  # auto | 1/d | 1/sqrt(d)
    zero_init: list = field(default_factory=list)  # readout, query
    trace: bool = True  # false: roles from layer types only, for a forward that cannot be traced at all
    conventions: str = "ezmup_plus"  # ezmup_plus | microsoft_mup (rules.CONVENTIONS)
    width_constants: str = "correct"  # numbers that change with the width: correct | warn | error
    hparams: HParams = field(default_factory=HParams)  # the knobs at base (ezmup_plus.hparams)


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float | None = None  # None: mup.hparams.weight_decay, else 0
    wd_mode: str = "independent"
    eps_mode: str = "scaled"
    betas: list | None = None
    eps: float | None = None
    momentum: float | None = None
    kwargs: dict = field(default_factory=dict)  # anything else the optimizer class takes


@dataclass
class SchedulerConfig:
    name: str = "constant"  # constant | cosine | linear | warmup_cosine
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0


@dataclass
class TrainConfig:
    steps: int = 100
    batch_size: int = 32
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    log_every: int = 10
    mixed_precision: str = "no"  # no | bf16 | fp16 (Accelerate's autocast; fp16 needs a GPU)
    grad_clip: float | None = None  # max global gradient norm, None: no clipping
    accumulation: int = 1  # microbatches per optimizer step; batch_size stays the global batch of one step
    checkpoint_every: int = 0  # optimizer steps between checkpoints (0: only the final one); --resume continues

    def __post_init__(self):
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"train.mixed_precision={self.mixed_precision!r} is unknown; choose from "
                              f"{MIXED_PRECISION}")
        for key, low in (("accumulation", 1), ("checkpoint_every", 0)):
            if getattr(self, key) < low:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be at least {low}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"train.grad_clip={self.grad_clip} must be positive (or null for no clipping)")


@dataclass
class DataConfig:
    name: str = "synthetic"  # synthetic | digits | california_housing | tinyshakespeare | cifar10
    path: str | None = None  # a local copy of the named set; else $EZMUP_PLUS_DATA, the cache or a download
    block_size: int = 64
    augment: bool = False  # cifar10: random crop (padding 4) and horizontal flip of the training batches
    val_size: int | None = None  # validation examples (text: blocks); None: the held-out split (text: 64 blocks)

    def __post_init__(self):
        if self.val_size is not None and self.val_size < 1:
            raise ConfigError(f"data.val_size={self.val_size} must be at least 1 (or null for the whole split)")


@dataclass
class Config:
    model: ModelConfig
    mup: MupConfig = field(default_factory=MupConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


MIXED_PRECISION = ("no", "bf16", "fp16")
SCHEDULERS = ("constant", "cosine", "linear", "warmup_cosine")


def load_config(path_or_dict: str | Path | Mapping, overrides: Sequence[str] = (),
                overlays: Sequence[str | Path] = ()) -> Config:
    """Read a YAML file (following ``extends:``) or a mapping, merge overlay files over it (such as the best.yaml
    of ``tune``), apply ``key.path=value`` overrides, type-check."""
    return _typed(Config, config_data(path_or_dict, overrides, overlays), "")


def config_data(path_or_dict: str | Path | Mapping, overrides: Sequence[str] = (),
                overlays: Sequence[str | Path] = ()) -> dict:
    """The plain mapping ``load_config`` type-checks (a tuning trial sets its values in a copy of it)."""
    data = read_yaml(path_or_dict) if isinstance(path_or_dict, (str, Path)) else dict(path_or_dict)
    for overlay in overlays:
        data = _merge(data, read_yaml(overlay))
    for item in overrides:
        _apply_override(data, item)
    return data


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping, safe-loaded, following ``extends:``: a config, an overlay or a tuning space."""
    return _read(Path(path), ())


def _read(path: Path, seen: tuple[Path, ...]) -> dict:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p.name) for p in (*seen, path))
        raise ConfigError(f"extends cycle: {chain}; remove one of the 'extends:' lines")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(f"{path}{_at(exc.problem_mark)}: {exc.problem} — only plain YAML is allowed (no !!python "
                          "tags); write the factory as a 'package.module:callable' string") from None
    except yaml.MarkedYAMLError as exc:
        context = f", {exc.context}{_at(exc.context_mark, 'started at ')}" if exc.context else ""
        raise ConfigError(f"{path}{_at(exc.problem_mark)}: not valid YAML ({exc.problem}{context})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (byte {exc.start} is not UTF-8); give a YAML config") from None
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, mup:, optimizer:, ...)")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return _merge(_read(path.parent / parent, (*seen, path)), data)


def _at(mark: yaml.Mark | None, prefix: str = "") -> str:
    """Where in the file a YAML error is, counted from 1 as editors do."""
    return f", {prefix}line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _merge(base: dict, update: Mapping) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def _apply_override(data: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form section.key=value (e.g. model.width=1024)")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    set_key(data, key.strip(), value, f"override {item!r}")


def set_key(data: dict, key: str, value: Any, what: str | None = None) -> None:
    """Set the dotted ``key`` (``optimizer.lr``) in a config mapping, making missing sections: what ``--set`` and a
    tuning trial apply, so both meet the same checks."""
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{what or repr(key)}: {part} is not a section")
    node[last] = value


def _typed(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types name their key path."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{_join(where, close[0])}'?" if close else f"; valid keys: {names}"
            raise ConfigError(f"unknown key '{_join(where, key)}'{hint}")
    values = {}
    for f in dataclasses.fields(cls):
        path = _join(where, f.name)
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing key '{path}'")
            continue
        values[f.name] = _check(hints[f.name], data[f.name], path)
    try:
        return cls(**values)
    except ValueError as exc:  # a value the section itself refuses (a knob that must be positive)
        raise ConfigError(f"{where}: {exc}") from None


def _check(hint: Any, value: Any, path: str) -> Any:
    options = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if dataclasses.is_dataclass(option):
            return _typed(option, value, path)
        origin = typing.get_origin(option) or option
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is not type(None) and isinstance(value, origin) and not (origin is int and isinstance(value, bool)):
            return value
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"'{path}' must be {names}, got {type(value).__name__} {value!r}")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


def import_factory(spec: str) -> Any:
    """``"package.module:callable"`` -> the callable."""
    module, sep, attr = spec.partition(":")
    if not sep:
        raise ConfigError(f"model.factory={spec!r} must look like 'package.module:callable'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"model.factory={spec!r} cannot be imported: {exc}") from None


def build_factory(cfg: Config):
    """The ``ezp.wrap`` factory a config describes."""
    from .build import wrap

    m, mup = cfg.model, cfg.mup
    base_width = mup.base_width if mup.base_width is not None else m.width
    if base_width is None:
        raise ConfigError("set model.width (and mup.base_width, the width the hyperparameters were tuned at)")
    return wrap(import_factory(m.factory), base_width=base_width, base_depth=mup.base_depth, sentinel=mup.sentinel,
                width_arg=m.width_arg, depth_arg=m.depth_arg, width_multiple=m.width_multiple,
                parametrization=mup.parametrization, depth_alpha=mup.depth_alpha, roles=mup.roles,
                branches=mup.branches, attn_scale=mup.attn_scale, zero_init=mup.zero_init, trace=mup.trace,
                conventions=mup.conventions, width_constants=mup.width_constants, hparams=mup.hparams, **m.kwargs)


def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    from .optim import get_mup_optimizer

    o = cfg.optimizer
    extra = {k: v for k, v in (("betas", tuple(o.betas) if o.betas else None), ("eps", o.eps),
                               ("momentum", o.momentum)) if v is not None}
    return get_mup_optimizer(model, lr=o.lr, optimizer=o.name, weight_decay=o.weight_decay, wd_mode=o.wd_mode,
                             eps_mode=o.eps_mode, **extra, **o.kwargs)


def build_scheduler(opt: torch.optim.Optimizer, cfg: Config):
    """A real ``torch.optim.lr_scheduler`` (per-group LRs keep their muP ratios), or None."""
    s, steps = cfg.scheduler, cfg.train.steps
    if s is None or s.name == "constant":
        return None
    if s.name not in SCHEDULERS:
        close = difflib.get_close_matches(s.name, SCHEDULERS, n=1)
        raise ConfigError(f"scheduler.name={s.name!r} is unknown{'; did you mean ' + repr(close[0]) if close else ''}"
                          f" (choose from {SCHEDULERS})")
    warmup = s.warmup_steps if s.name == "warmup_cosine" else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        shape = 1 - progress if s.name == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * shape

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def from_config(path_or_cfg: str | Path | Mapping | Config, overrides: Sequence[str] = ()):
    """(model, optimizer, scheduler or None) from a config file, mapping or :class:`Config`."""
    cfg = path_or_cfg if isinstance(path_or_cfg, Config) else load_config(path_or_cfg, overrides)
    torch.manual_seed(cfg.train.seed)
    dtype = getattr(torch, cfg.train.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"train.dtype={cfg.train.dtype!r} is not a torch dtype (float32, bfloat16, float16)")
    model = build_factory(cfg)(width=cfg.model.width, depth=cfg.model.depth, device=cfg.train.device, dtype=dtype)
    opt = build_optimizer(model, cfg)
    return model, opt, build_scheduler(opt, cfg)
