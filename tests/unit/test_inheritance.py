"""Weight inheritance on nnU-Net's own U-Nets (built from plans by nnU-Net's builder): width 1 is the teacher to the
bit, a slimmer student loads strictly into the network nnU-Net builds from its plans and holds exactly the selected
teacher weights, tied channels stay tied, and an unknown layout is refused."""

import copy

import pytest
import torch
from conftest import tiny_plans
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_hlfd.inheritance import InheritanceError, inherit_weights
from nnunet_hlfd.inheritance.weight_selection import build_graph, select_channels
from nnunet_hlfd.planning import derive_student_architecture

RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"


def architecture(dim: int, residual: bool) -> dict:
    """tiny_plans' 3D PlainConvUNet, or its 2D / ResidualEncoderUNet form (2 blocks per stage: identity and projected
    shortcuts, a stem)."""
    arch = copy.deepcopy(tiny_plans()["configurations"]["3d_fullres"]["architecture"])
    kwargs = arch["arch_kwargs"]
    if dim == 2:
        kwargs.update(
            conv_op="torch.nn.modules.conv.Conv2d", norm_op="torch.nn.modules.instancenorm.InstanceNorm2d",
            kernel_sizes=[[3, 3]] * 4, strides=[[1, 1], [2, 2], [2, 2], [2, 2]],
        )  # fmt: skip
    if residual:
        arch["network_class_name"] = RESENC
        kwargs["n_blocks_per_stage"] = kwargs.pop("n_conv_per_stage")
    return arch


def build(arch: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return get_network_from_plans(
        arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 3, allow_init=True,
        deep_supervision=True,
    ).eval()  # fmt: skip


def perturbed(network: torch.nn.Module) -> torch.nn.Module:
    """A 'trained' teacher: random norm scales and biases, so that every channel differs and ties are rare."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    return network


CASES = [(3, False), (2, False), (3, True), (2, True)]
IDS = ["3d-plain", "2d-plain", "3d-resenc", "2d-resenc"]


@pytest.mark.parametrize("dim, residual", CASES, ids=IDS)
def test_width_one_reproduces_the_teacher_exactly(dim, residual):
    arch = architecture(dim, residual)
    teacher, student = perturbed(build(arch)), build(derive_student_architecture(arch, 1.0), seed=1)
    x = torch.randn(2, 1, *([16, 32, 32] if dim == 3 else [32, 32]))
    with torch.no_grad():
        before = student(x)[0]
        inherit_weights(teacher, student)
        assert not torch.equal(before, teacher(x)[0])
        assert all(torch.equal(s, t) for s, t in zip(student(x), teacher(x)))  # every deep-supervision output


@pytest.mark.parametrize("dim, residual", CASES, ids=IDS)
def test_a_slim_student_holds_the_selected_teacher_weights_and_loads_strictly(dim, residual):
    arch = architecture(dim, residual)
    student_arch = derive_student_architecture(arch, 0.5, n_conv_per_stage=1)
    teacher, student = perturbed(build(arch)), build(student_arch, seed=1)
    record = inherit_weights(teacher, student, "l1")
    # into the network nnU-Net builds from the student's plans, strictly
    fresh = build(student_arch, seed=2)
    fresh.load_state_dict(student.state_dict(), strict=True)
    graph = build_graph(teacher, student)
    kept = select_channels(graph)
    # the first encoder conv: its outputs are the group's top channels by L1 filter norm (by hand, float64)
    first = next(layer for layer in graph.layers if layer.reads == ["input"])
    weight = (first.teacher.conv if hasattr(first.teacher, "conv") else first.teacher).weight.double()
    group = graph.find(first.writes)
    producers = [la for la in graph.layers if la.writes is not None and graph.find(la.writes) == group]
    l1 = sum(la.teacher.conv.weight.double().abs().flatten(1).sum(1) for la in producers)
    expected = torch.sort(torch.topk(l1, len(kept[group])).indices).values
    assert torch.equal(kept[group], expected)
    assert torch.equal(first.student.conv.weight.double(), weight[expected])
    assert torch.equal(first.student.norm.weight, first.teacher.norm.weight[expected])
    # the segmentation heads keep every class; a decoder's first conv reads the kept transposed-conv and skip
    # channels, the skip's offset by the transposed conv's full width
    assert all(la.student.weight.shape[0] == 3 for la in graph.layers if la.writes is None)
    decoder_first = next(la for la in graph.layers if la.name == "decoder.stages.0.convs.0")
    transposed, skip = (graph.find(s) for s in decoder_first.reads)
    width = graph.layers[[la.name for la in graph.layers].index("decoder.transpconvs.0")].teacher.weight.shape[1]
    columns = torch.cat([kept[transposed], kept[skip] + width])
    assert torch.equal(
        decoder_first.student.conv.weight,
        decoder_first.teacher.conv.weight[:, columns][kept[graph.find(decoder_first.writes)]],
    )
    assert record["importance"] == "l1" and record["groups"] == len(kept)
    assert record["kept_channels"] == {group: k.tolist() for group, k in kept.items()}


def test_residual_streams_are_one_group_and_skips_keep_their_channels():
    arch = architecture(3, True)
    teacher, student = build(arch), build(derive_student_architecture(arch, 0.5))
    graph = build_graph(teacher, student)
    # the stem, stage 0's two blocks and their identity shortcuts write one residual stream
    writers = {la.name for la in graph.layers if la.writes and graph.find(la.writes) == graph.find("encoder.stem.0")}
    assert writers == {"encoder.stem.convs.0", "encoder.stages.0.blocks.0.conv2", "encoder.stages.0.blocks.1.conv2"}
    # stage 1 starts with a projected (strided) shortcut: it writes stage 1's stream, and reads stage 0's
    projection = next(la for la in graph.layers if la.name == "encoder.stages.1.blocks.0.skip")
    assert graph.find(projection.writes) == graph.find("encoder.stages.1.stream")
    assert graph.find(projection.reads[0]) == graph.find("encoder.stem.0")


def test_norm_scale_importance_and_refusals():
    arch = architecture(2, False)
    teacher, student = perturbed(build(arch)), build(derive_student_architecture(arch, 0.25))
    record = inherit_weights(teacher, student, "norm_scale")
    first = next(layer for layer in build_graph(teacher, student).layers if layer.reads == ["input"])
    norm_t, norm_s = first.teacher.norm, first.student.norm
    kept = torch.sort(torch.topk(norm_t.weight.detach().abs(), norm_s.weight.shape[0]).indices).values
    assert torch.equal(norm_s.weight, norm_t.weight[kept])
    assert record["importance"] == "norm_scale"
    with pytest.raises(InheritanceError, match="choose among"):
        inherit_weights(teacher, student, "taylor")
    with pytest.raises(InheritanceError, match="the teacher is a PlainConvUNet, the student a ResidualEncoderUNet"):
        inherit_weights(teacher, build(architecture(2, True)))
    wider = derive_student_architecture(arch, 1.0)
    wider["arch_kwargs"]["features_per_stage"] = [f * 2 for f in wider["arch_kwargs"]["features_per_stage"]]
    with pytest.raises(InheritanceError, match="the student has 16 channels, the teacher 8"):
        inherit_weights(teacher, build(wider))
    student.decoder.extra = torch.nn.Conv2d(1, 1, 1)  # a layer the selection does not know: refused, not left random
    with pytest.raises(InheritanceError, match=r"no teacher weights selected for \['decoder.extra.weight'"):
        inherit_weights(teacher, student)
