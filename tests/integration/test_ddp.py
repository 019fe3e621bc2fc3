"""Adapters stay synchronised under DDP: two CPU processes on the gloo backend, different data per rank.

This is the distillation side of nnU-Net's `-num_gpus N` path (which itself needs CUDA and NCCL).
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import make_unet, targets_for

from nnunet_hlfd.methods import HLFD, Distiller, HLFDConfig
from nnunet_hlfd.methods.base import by_decoder_stage
from nnunet_hlfd.methods.contrastive import MultiScaleContrastiveKD
from nnunet_hlfd.methods.fitnets import FitNets
from nnunet_hlfd.methods.hlfd_ablations import ConcatenatedFeedback

METHODS_WITH_ADAPTERS = {
    "hlfd_adapters": lambda: HLFD(HLFDConfig(plfd_heads="adapters")),
    "fitnets": FitNets,
    "hlfd_concatenated_feedback": ConcatenatedFeedback,
    "multi_scale_contrastive": MultiScaleContrastiveKD,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str, wrap: bool, method: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        student, teacher = make_unet(3, 4), make_unet(3, 8)
        distiller = Distiller(METHODS_WITH_ADAPTERS[method](), regions=False)
        torch.manual_seed(100 + rank)  # adapters start different on each rank
        distiller.attach(student, teacher, num_classes=3)
        if wrap:
            distiller.wrap_adapters_for_ddp(torch.device("cpu"), rank)
        optimizer = torch.optim.SGD(distiller.adapters.parameters(), lr=0.5)
        losses = []
        for step in range(3):
            x = torch.randn(2, 1, 8, 16, 16, generator=torch.Generator().manual_seed(1000 * rank + step))
            optimizer.zero_grad()
            out, captured = distiller.forward(student, x)
            targets = by_decoder_stage(targets_for(out, regions=False, ignore=False), len(out) + 1)
            loss = distiller.losses(out, captured, {j: None for j in range(len(out))}, targets)["total"]
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        adapters = distiller.adapters.module if wrap else distiller.adapters
        torch.save({"state": adapters.state_dict(), "losses": losses}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _run(tmp_path, wrap: bool, method: str = "hlfd_adapters") -> list[dict]:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), wrap, method), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("method", METHODS_WITH_ADAPTERS)
def test_adapters_identical_on_every_rank_under_ddp(tmp_path, method):
    r0, r1 = _run(tmp_path, wrap=True, method=method)
    assert r0["losses"] != r1["losses"]  # the ranks did see different data
    assert r0["state"].keys() == r1["state"].keys()
    for key in r0["state"]:
        torch.testing.assert_close(r0["state"][key], r1["state"][key], rtol=0, atol=1e-6)


def test_without_ddp_wrapping_adapters_would_diverge(tmp_path):
    r0, r1 = _run(tmp_path, wrap=False)
    assert any(not torch.allclose(r0["state"][k], r1["state"][k]) for k in r0["state"])
