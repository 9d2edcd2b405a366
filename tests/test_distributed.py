"""DDP and FSDP2 (CPU, gloo, two processes): the losses of a few steps equal one process on the full batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import ezmup_plus as ezp

STEPS = 3


def make(width):
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 8, generator=g), torch.randn(32, 1, generator=g)


def train(model, opt, x, y):
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return losses


MODES = ("ddp", "fsdp2")


def wrapped(model, mode):
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    return fully_shard(model)


def worker(rank, world, init_file, out):
    """Both wrappers in one pair of processes (starting processes is most of the cost of this test)."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x, y = data()
    half = len(x) // world
    results = {}
    for mode in MODES:
        torch.manual_seed(0)
        model = wrapped(ezp.wrap(make, base_width=16)(width=64), mode)
        opt = ezp.get_mup_optimizer(model, lr=1e-2, optimizer="adamw", weight_decay=0.1, foreach=False)
        losses = train(model, opt, x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half])
        for loss in losses:
            dist.all_reduce(loss)
        results[mode] = [float(loss) / world for loss in losses]
    if rank == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()
    # gloo's worker threads can still hold tensors while the interpreter is torn down, which aborts now and
    # then (pytorch/pytorch#179291); everything is saved, so leave without the interpreter's teardown
    os._exit(0)


def test_two_processes_match_one(tmp_path):
    torch.manual_seed(0)
    model = ezp.wrap(make, base_width=16)(width=64)
    opt = ezp.get_mup_optimizer(model, lr=1e-2, optimizer="adamw", weight_decay=0.1, foreach=False)
    single = [float(loss) for loss in train(model, opt, *data())]
    out = tmp_path / "losses.pt"
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    results = torch.load(out)
    for mode in MODES:
        assert results[mode] == pytest.approx(single, rel=1e-5), mode
