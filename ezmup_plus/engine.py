"""``ezmup-plus train`` on Hugging Face Accelerate: batches on the model's device, bf16 autocast, gradient clipping
and accumulation, checkpoints every N steps with resume, and DDP when started by ``torchrun`` or
``accelerate launch``.

The engine runs the loop; it decides no number of the parametrization. The muP optimizer and scheduler are handed
to ``Accelerator.prepare``, which wraps them without rebuilding the param groups, so every tensor keeps the LR,
eps and weight decay of its plan.

``train.batch_size`` is the global batch of one optimizer step, whatever the number of processes and
microbatches: the tuned hyperparameters are defined for it. Each step draws one global batch from the same
seeded stream and splits it into ``accumulation`` microbatches, each split again across the processes, so a run
sees the same data and (up to float reduction order) computes the same losses on 1 process or on N.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from .atomic import atomic_write
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig

Batch = tuple[torch.Tensor, torch.Tensor]
CHECKPOINT = "checkpoint.pt"


class Engine:
    """One Accelerator for one training run; ``with Engine(cfg.train) as engine:`` releases Accelerate's
    process-wide state at the end."""

    def __init__(self, train: TrainConfig):
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration

        self.cfg = train
        # split_batches: our batch is global, so Accelerate's scheduler wrapper steps once per optimizer step
        # (not once per process, as it would for per-process batches)
        self.accelerator = Accelerator(cpu=train.device == "cpu", mixed_precision=train.mixed_precision,
                                       gradient_accumulation_steps=train.accumulation,
                                       dataloader_config=DataLoaderConfiguration(split_batches=True))
        acc = self.accelerator
        self.is_main_process, self.num_processes = acc.is_main_process, acc.num_processes  # kept past close
        try:
            self._check(train)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release Accelerate's process-wide state, which would refuse other settings later in the same process (a
        sweep, the tests); the process group itself stays up."""
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state()
        GradientState._reset_state()

    def _check(self, train: TrainConfig) -> None:
        from accelerate.utils import DistributedType

        acc = self.accelerator
        if train.device != "cpu" and acc.device.type != torch.device(train.device).type:
            raise ConfigError(f"train.device={train.device!r}, but Accelerate found {acc.device.type} only")
        if train.mixed_precision == "fp16" and acc.device.type == "cpu":
            # Accelerate builds neither an fp16 autocast nor a grad scaler on CPU: it would silently train in fp32
            raise ConfigError("train.mixed_precision=fp16 is not run on CPU (Accelerate applies no fp16 autocast "
                              "there); use bf16 or no")
        if acc.distributed_type == DistributedType.FSDP:
            raise ValueError("FSDP through Accelerate is not supported by 'ezmup-plus train' (its checkpoints are "
                             "whole state dicts, as DDP keeps them); launch without --use_fsdp")
        if train.batch_size % (train.accumulation * acc.num_processes):
            raise ConfigError(f"train.batch_size={train.batch_size} must be a multiple of train.accumulation x "
                              f"processes = {train.accumulation} x {acc.num_processes}: it is the global batch, split "
                              "evenly into microbatches on every process")

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def fit(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, batches: Iterator[Batch],
            loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], val: Batch, out: Path,
            resume: bool = False) -> dict:
        """Train ``train.steps`` optimizer steps, writing ``loss.csv``, ``loss.json`` and ``checkpoint.pt`` in
        ``out``; with ``resume``, continue from the checkpoint there (same data, LR and optimizer state as if never
        stopped). Returns what ``loss.json`` holds."""
        acc, cfg, out = self.accelerator, self.cfg, Path(out)
        log, start = [], 0
        if resume:
            state = self._resume(out / CHECKPOINT, model, optimizer, scheduler)
            log, start = state["log"], state["step"]
        model, optimizer, scheduler = self.prepare(model, optimizer, scheduler)
        for _ in range(start):  # the data stream where the checkpointed run stopped
            next(batches)
        rank, world = acc.process_index, acc.num_processes
        bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train",
                   disable=not acc.is_local_main_process)
        for step, (x, y) in zip(bar, batches):
            lr = optimizer.param_groups[0]["lr"]  # the LR this step uses
            loss_sum, norm = 0.0, None
            for xm, ym in zip(x.chunk(cfg.accumulation), y.chunk(cfg.accumulation)):
                xp = xm.chunk(world)[rank].to(acc.device, non_blocking=True)
                yp = ym.chunk(world)[rank].to(acc.device, non_blocking=True)
                with acc.accumulate(model):  # gradients are all-reduced on the last microbatch only
                    loss = loss_fn(model(xp), yp)
                    acc.backward(loss)  # divides by train.accumulation: the mean over the global batch
                    if acc.sync_gradients and cfg.grad_clip is not None:
                        norm = float(acc.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                    optimizer.step()  # a no-op until the last microbatch
                    if scheduler is not None:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                loss_sum += float(acc.reduce(loss.detach(), "mean"))
            log.append({"step": step, "loss": loss_sum / cfg.accumulation, "lr": lr,
                        **({} if norm is None else {"grad_norm": norm})})
            if step % cfg.log_every == 0:
                bar.set_postfix(loss=f"{log[-1]['loss']:.4f}")
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                self._checkpoint(out, model, optimizer, scheduler, step + 1, log)
        bar.close()
        result = {"train": log, "val_loss": self._evaluate(model, loss_fn, val)}
        if acc.is_main_process:
            _write_logs(out, result)
        self._checkpoint(out, model, optimizer, scheduler, cfg.steps, log)
        return result

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler=None) -> tuple:
        """Accelerate's wrappers: the model on the device (DDP over several processes, autocast in its forward),
        the optimizer and scheduler wrapped around the same objects, so the muP param groups stay as built."""
        if scheduler is None:
            return (*self.accelerator.prepare(model, optimizer), None)
        return self.accelerator.prepare(model, optimizer, scheduler)

    def _checkpoint(self, out, model, optimizer, scheduler, step, log) -> None:
        """The model, optimizer, scheduler, step and log so far, written once (by the main process), atomically."""
        acc = self.accelerator
        if acc.is_main_process:
            save_checkpoint(out / CHECKPOINT, acc.unwrap_model(model), optimizer, step=step, log=log,
                            rng=torch.get_rng_state(),
                            **({} if scheduler is None else {"scheduler": scheduler.state_dict()}))
        acc.wait_for_everyone()  # no process runs ahead of a checkpoint it may be asked to resume from

    def _resume(self, path: Path, model, optimizer, scheduler) -> dict:
        """Load a checkpoint of 'ezmup-plus train' into the model, optimizer and scheduler before they are
        prepared."""
        if not path.exists():
            raise FileNotFoundError(2, "no checkpoint to resume from (run without --resume to start)", str(path))
        state = load_checkpoint(path, model)
        if "step" not in state or "optimizer" not in state:
            raise ValueError(f"{path} holds no training step: it was not written by 'ezmup-plus train', which "
                             "--resume continues; run without --resume")
        optimizer.load_state_dict(state["optimizer"])
        if (scheduler is None) != ("scheduler" not in state):
            raise ValueError(f"{path} was written {'with' if 'scheduler' in state else 'without'} an LR scheduler "
                             "and this config has the other; resume with the config that wrote it")
        if state["step"] > self.cfg.steps:
            raise ValueError(f"{path} is at step {state['step']}, past train.steps={self.cfg.steps}; raise train.steps "
                             "to train on")
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])  # the CPU generator (dropout masks on CPU)
        return state

    def _evaluate(self, model, loss_fn, val: Batch) -> float:
        model.eval()
        with torch.no_grad():
            loss = float(loss_fn(model(val[0].to(self.device)), val[1].to(self.device)))
        model.train()
        return loss


def _write_logs(out: Path, result: dict) -> None:
    clipped = any("grad_norm" in row for row in result["train"])  # a resumed run may have clipped in part only
    with atomic_write(out / "loss.csv", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "loss", "lr", *(["grad_norm"] if clipped else [])])
        writer.writeheader()
        writer.writerows(result["train"])
    with atomic_write(out / "loss.json") as fh:
        json.dump(result, fh)
