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


# one test process runs the module (pytest -n 2 --dist loadgroup): the two ranks start once for every case
pytestmark = pytest.mark.xdist_group("ddp")
CASES = [(method, True) for method in METHODS_WITH_ADAPTERS] + [("hlfd_adapters", False)]  # (method, DDP-wrapped)


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank: every case in turn, in one process group (one start-up of the two processes for all cases)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        for method, wrap in CASES:
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
            result = {"state": adapters.state_dict(), "losses": losses}
            torch.save(result, os.path.join(out_dir, f"{method}_{'ddp' if wrap else 'plain'}_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Per (method, wrapped): what each of the two ranks ended with."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return {
        (method, wrap): [torch.load(out / f"{method}_{'ddp' if wrap else 'plain'}_rank{r}.pt") for r in range(2)]
        for method, wrap in CASES
    }


@pytest.mark.parametrize("method", METHODS_WITH_ADAPTERS)
def test_adapters_identical_on_every_rank_under_ddp(ranks, method):
    r0, r1 = ranks[method, True]
    assert r0["losses"] != r1["losses"]  # the ranks did see different data
    assert r0["state"].keys() == r1["state"].keys()
    for key in r0["state"]:
        torch.testing.assert_close(r0["state"][key], r1["state"][key], rtol=0, atol=1e-6)


def test_without_ddp_wrapping_adapters_would_diverge(ranks):
    r0, r1 = ranks["hlfd_adapters", False]
    assert any(not torch.allclose(r0["state"][k], r1["state"][k]) for k in r0["state"])
