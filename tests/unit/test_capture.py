"""Forward hooks capture the right stages with the right shapes, and only when asked."""

import pytest
import torch
from conftest import PATCH, STRIDES, make_unet
from torch import nn

from nnunet_hlfd.capture import StageLayoutError, unet_layout, unet_recorder


def _grid(dim, stage):
    g = list(PATCH[dim])
    for s in STRIDES[dim][: stage + 1]:
        g = [a // b for a, b in zip(g, s)]
    return tuple(g)


@pytest.mark.parametrize("dim,residual", [(3, False), (2, False), (3, True)])
def test_hooks_capture_stage_shapes(dim, residual):
    net = make_unet(dim, 4, residual)
    layout = unet_layout(net)
    n = layout.n_stages
    rec = unet_recorder(net, encoder_stages=range(n), decoder_stages=range(n - 1))
    x = torch.randn(2, 1, *PATCH[dim])
    net(x)
    assert rec.outputs == {}  # inert outside recording(): validation and inference store nothing
    with rec.recording() as out:
        net(x)
    for i in range(n):
        assert tuple(out[f"encoder.{i}"].shape) == (2, 4 * 2**i, *_grid(dim, i))
    for j in range(n - 1):
        assert tuple(out[f"decoder.{j}"].shape) == (2, layout.decoder_channels[j], *_grid(dim, n - 2 - j))
    rec.clear()
    assert rec.outputs == {}


def test_recorder_reports_missing_captures():
    net = make_unet(3, 4)
    rec = unet_recorder(net, encoder_stages=[0])
    with pytest.raises(RuntimeError, match="feature capture failed"):
        with rec.recording():
            pass  # no forward: nothing recorded


def test_non_unet_is_refused():
    with pytest.raises(StageLayoutError, match="encoder.stages"):
        unet_layout(nn.Conv3d(1, 1, 1))
