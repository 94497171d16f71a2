"""Worker for the DistributedDataParallel test (spawned processes import this module)."""
import os

import torch
import torch.distributed as dist
from torch import nn

import triton_dsd


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        triton_dsd.DepthwiseSeparableDilatedConv2d(3, 8, 3, dilation=2, padding="same"),
        nn.ReLU(),
        triton_dsd.DepthwiseSeparableDilatedConv2d(8, 4, 3, padding=1, fused=False),
    )


def batch():
    g = torch.Generator().manual_seed(123)
    return torch.randn(4, 3, 7, 7, generator=g), torch.randn(4, 4, 7, 7, generator=g)


def train(model: nn.Module, x, t, steps: int = 3):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(x) - t).square().mean()
        loss.backward()
        opt.step()
    return model


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        model = nn.parallel.DistributedDataParallel(make_model())
        x, t = batch()
        per = x.shape[0] // world
        train(model, x[rank * per:(rank + 1) * per], t[rank * per:(rank + 1) * per])
        if rank == 0:
            torch.save(model.module.state_dict(), out)
    finally:
        dist.destroy_process_group()
