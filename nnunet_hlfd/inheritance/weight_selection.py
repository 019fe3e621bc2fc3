"""Select a slim student's weights from its teacher's, channel by channel.

A *channel space* is the set of channels one tensor carries between layers: a convolution's outputs, and what reads
them. Some spaces must keep the same channels because the network ties them together (DepGraph's groups):

- a stage's output feeds the next stage and the decoder skip (one space, read twice);
- in ``ResidualEncoderUNet`` every block of a stage adds its output to the same residual stream, and an identity
  shortcut ties the stage's input stream to it (spaces merged);
- a decoder stage reads ``cat(transposed conv, skip)``: its first convolution's inputs are two spaces, side by side.

Each group keeps the student's number of channels: those of the teacher's with the largest importance (``l1``: the
sum over the group's producers of each output channel's L1 filter norm, as in Li et al. 2017 and the weight-selection
prototype; ``norm_scale``: the sum of |γ| of the norms after the producers, L1 for the transposed convolutions,
which have no norm). The segmentation heads keep every class,
the network's input every image channel. A student with fewer convolutions (``PlainConvUNet``) or residual blocks
(``ResidualEncoderUNet``) per encoder stage takes the *first* ones of the teacher's stage.

Written against nnU-Net's architectures (dynamic_network_architectures) rather than Torch-Pruning's traced graph: the
student must be exactly the network nnU-Net builds from the student's plans (its rounding of widths, its depth), its
graph fails on nnU-Net's in-place LeakyReLU, and its recursion has open issues on deep 3D U-Nets. Every parameter of
the student is assigned exactly once, or the selection is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from nnunet_hlfd.errors import HLFDError

IMPORTANCES = ("l1", "norm_scale")
INPUT = "input"  # the image channels: every one kept


class InheritanceError(HLFDError):
    """The student cannot inherit from this teacher (another architecture, or a layer this selection does not know)."""


@dataclass
class Layer:
    """One convolution (with its norm) of both networks: which space it writes and which it reads."""

    name: str
    teacher: nn.Module  # ConvDropoutNormReLU, or a bare conv / transposed conv
    student: nn.Module
    writes: str | None  # None: every output kept (segmentation heads)
    reads: list[str]  # concatenated along the input channels, in this order


@dataclass
class Graph:
    layers: list[Layer] = field(default_factory=list)
    parent: dict[str, str] = field(default_factory=dict)  # union-find of the spaces tied together

    def find(self, space: str) -> str:
        while self.parent.setdefault(space, space) != space:
            space = self.parent[space]
        return space

    def tie(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)

    def add(self, name: str, teacher: nn.Module, student: nn.Module, writes: str | None, reads: list[str]) -> None:
        self.layers.append(Layer(name, teacher, student, writes, reads))


# ---- the graph of nnU-Net's U-Nets --------------------------------------------------------------------------
def _conv(block: nn.Module) -> nn.Module:
    return block.conv if hasattr(block, "conv") else block


def _norm(block: nn.Module) -> nn.Module | None:
    return getattr(block, "norm", None)


def _kept(teacher_blocks, student_blocks, where: str) -> list[tuple[nn.Module, nn.Module]]:
    if len(student_blocks) > len(teacher_blocks):
        raise InheritanceError(
            f"{where}: the student has {len(student_blocks)} blocks, the teacher {len(teacher_blocks)}"
        )
    return list(zip(teacher_blocks, student_blocks))  # the teacher's first ones


def _plain_stage(graph: Graph, name: str, teacher, student, reads: str) -> str:
    """A StackedConvBlocks: its convs in a chain; returns the space of its output."""
    for c, (t, s) in enumerate(_kept(teacher.convs, student.convs, name)):
        graph.add(f"{name}.convs.{c}", t, s, f"{name}.{c}", [reads])
        reads = f"{name}.{c}"
    return reads


def _residual_stage(graph: Graph, name: str, teacher, student, reads: str) -> str:
    """A StackedResidualBlocks: every block writes the stage's residual stream; returns it."""
    stream = f"{name}.stream"
    for b, (t, s) in enumerate(_kept(teacher.blocks, student.blocks, name)):
        block = f"{name}.blocks.{b}"
        if getattr(t, "apply_se", False):
            raise InheritanceError(f"{block}: squeeze-excitation blocks are not supported")
        inner = ["conv1", "conv2", "conv3"] if hasattr(t, "conv3") else ["conv1", "conv2"]
        space = reads
        for k, conv in enumerate(inner):
            writes = stream if k == len(inner) - 1 else f"{block}.{conv}"
            graph.add(f"{block}.{conv}", getattr(t, conv), getattr(s, conv), writes, [space])
            space = writes
        projections = [m for m in t.skip.modules() if hasattr(m, "conv")] if isinstance(t.skip, nn.Module) else []
        if projections:
            student_projection = next(m for m in s.skip.modules() if hasattr(m, "conv"))
            graph.add(f"{block}.skip", projections[0], student_projection, stream, [reads])
        else:  # identity shortcut: the block's input is the stream it adds to
            graph.tie(reads, stream)
        reads = stream
    return stream


def build_graph(teacher: nn.Module, student: nn.Module) -> Graph:
    """The layers and tied spaces of a PlainConvUNet or ResidualEncoderUNet pair (same class, same stage count)."""
    if type(teacher) is not type(student):
        raise InheritanceError(f"the teacher is a {type(teacher).__name__}, the student a {type(student).__name__}")
    encoder_t, encoder_s = teacher.encoder, student.encoder
    if len(encoder_t.stages) != len(encoder_s.stages):
        raise InheritanceError(f"the teacher has {len(encoder_t.stages)} stages, the student {len(encoder_s.stages)}")
    graph, reads = Graph(), INPUT
    if getattr(encoder_t, "stem", None) is not None:
        reads = _plain_stage(graph, "encoder.stem", encoder_t.stem, encoder_s.stem, reads)
    skips = []
    for i, (t, s) in enumerate(zip(encoder_t.stages, encoder_s.stages)):
        if isinstance(t, nn.Sequential) and not hasattr(t, "convs"):  # nnU-Net's pooling option: pool, then convs
            t, s = t[-1], s[-1]
        if hasattr(t, "blocks"):
            reads = _residual_stage(graph, f"encoder.stages.{i}", t, s, reads)
        elif hasattr(t, "convs"):
            reads = _plain_stage(graph, f"encoder.stages.{i}", t, s, reads)
        else:
            raise InheritanceError(f"encoder stage {i}: an unknown layout ({type(t).__name__})")
        skips.append(reads)
    decoder_t, decoder_s = teacher.decoder, student.decoder
    lower = skips[-1]
    for i, (t, s) in enumerate(zip(decoder_t.stages, decoder_s.stages)):
        transposed = f"decoder.transpconvs.{i}"
        graph.add(transposed, decoder_t.transpconvs[i], decoder_s.transpconvs[i], transposed, [lower])
        reads = [transposed, skips[-(i + 2)]]
        for c, (tc, sc) in enumerate(_kept(t.convs, s.convs, f"decoder.stages.{i}")):
            graph.add(f"decoder.stages.{i}.convs.{c}", tc, sc, f"decoder.stages.{i}.{c}", reads)
            reads = [f"decoder.stages.{i}.{c}"]
        lower = reads[0]
        graph.add(f"decoder.seg_layers.{i}", decoder_t.seg_layers[i], decoder_s.seg_layers[i], None, [lower])
    return graph


# ---- importance and selection --------------------------------------------------------------------------------
def _out_dim(conv: nn.Module) -> int:
    return 1 if isinstance(conv, nn.modules.conv._ConvTransposeNd) else 0


def _importance(layer: Layer, importance: str) -> torch.Tensor:
    """One value per output channel of the teacher's layer."""
    conv, norm = _conv(layer.teacher), _norm(layer.teacher)
    if importance == "norm_scale" and getattr(norm, "weight", None) is not None:
        return norm.weight.detach().abs().double()
    # l1, and norm_scale's choice for the transposed convolutions (nnU-Net gives them no norm; each is a group alone)
    weight = conv.weight.detach().double()
    dim = _out_dim(conv)
    return weight.abs().transpose(0, dim).reshape(weight.shape[dim], -1).sum(1)


def _sizes(layer: Layer) -> tuple[int, int]:
    t, s = _conv(layer.teacher), _conv(layer.student)
    dim = _out_dim(t)
    return t.weight.shape[dim], s.weight.shape[dim]


def group_sizes(graph: Graph) -> dict[str, tuple[int, int]]:
    """Group (its root space) -> its number of channels in the teacher and in the student, the same for every
    producer of the group."""
    sizes: dict[str, tuple[int, int]] = {}
    for layer in graph.layers:
        if layer.writes is None:
            continue
        group, size = graph.find(layer.writes), _sizes(layer)
        if sizes.setdefault(group, size) != size:
            raise InheritanceError(f"{layer.name}: {size} channels (teacher, student), its group {sizes[group]}")
    if graph.find(INPUT) in sizes:
        raise InheritanceError("the image channels are tied to a layer's outputs: an unknown layout")
    return sizes


def select_channels(graph: Graph, importance: str = "l1") -> dict[str, torch.Tensor]:
    """Group (its root space) -> the teacher's channels the student keeps, in increasing order."""
    if importance not in IMPORTANCES:
        raise InheritanceError(f"importance {importance!r}: choose among {list(IMPORTANCES)}")
    sizes = group_sizes(graph)
    scores: dict[str, torch.Tensor] = {}
    for layer in graph.layers:
        if layer.writes is not None:
            group, score = graph.find(layer.writes), _importance(layer, importance)
            scores[group] = scores[group] + score if group in scores else score
    kept = {}
    for group, score in scores.items():
        n_student = sizes[group][1]
        if n_student > score.numel():
            raise InheritanceError(f"{group}: the student has {n_student} channels, the teacher {score.numel()}")
        # stable order for ties (width 1 keeps every channel in place)
        order = torch.argsort(-score, stable=True)[:n_student]
        kept[group] = torch.sort(order).values
    return kept


def _input_channels(graph: Graph, layer: Layer, kept: dict[str, torch.Tensor], widths: dict[str, int]) -> torch.Tensor:
    """The teacher's input channels of ``layer`` the student keeps (a concatenation: each part offset by the
    teacher's full width of the parts before it); every image channel for the first layer."""
    if graph.find(layer.reads[0]) == graph.find(INPUT):
        conv = _conv(layer.teacher)
        return torch.arange(conv.weight.shape[1 - _out_dim(conv)])
    parts, offset = [], 0
    for space in layer.reads:
        group = graph.find(space)
        parts.append(kept[group] + offset)
        offset += widths[group]
    return torch.cat(parts)


def _copy(target: torch.Tensor, source: torch.Tensor, name: str, assigned: set[int]) -> None:
    if target.shape != source.shape:
        raise InheritanceError(
            f"{name}: the selection gives {tuple(source.shape)}, the student has {tuple(target.shape)}"
        )
    with torch.no_grad():
        target.copy_(source)
    assigned.add(id(target))


def inherit_weights(teacher: nn.Module, student: nn.Module, importance: str = "l1") -> dict:
    """Copy the selected teacher weights into ``student`` (in place) and return a record of the selection.

    Refused (InheritanceError) unless every parameter of the student is assigned: a layer this selection does not
    know would otherwise keep its random weights silently."""
    graph = build_graph(teacher, student)
    kept = select_channels(graph, importance)
    widths = {group: teacher_width for group, (teacher_width, _) in group_sizes(graph).items()}
    assigned: set[int] = set()
    for layer in graph.layers:
        t, s = _conv(layer.teacher), _conv(layer.student)
        out_dim = _out_dim(t)
        n_out = t.weight.shape[out_dim]
        outs = kept[graph.find(layer.writes)] if layer.writes is not None else torch.arange(n_out)
        ins = _input_channels(graph, layer, kept, widths)
        weight = t.weight.detach().index_select(out_dim, outs).index_select(1 - out_dim, ins)
        _copy(s.weight, weight, f"{layer.name}.weight", assigned)
        if t.bias is not None:
            _copy(s.bias, t.bias.detach()[outs], f"{layer.name}.bias", assigned)
        norm_t, norm_s = _norm(layer.teacher), _norm(layer.student)
        if norm_t is not None:
            for (name, tensor), target in zip(norm_t.state_dict().items(), norm_s.state_dict(keep_vars=True).values()):
                if tensor.dim() and tensor.shape[0] == n_out:
                    _copy(target, tensor[outs], f"{layer.name}.norm.{name}", assigned)
    missed = [name for name, p in student.named_parameters() if id(p) not in assigned]
    if missed:
        raise InheritanceError(
            f"no teacher weights selected for {missed[:5]}: an architecture this selection does not know"
        )
    return {
        "importance": importance,
        "groups": len(kept),
        # per group (named after one of its spaces): the teacher's channels kept, of how many
        "kept_channels": {group: k.tolist() for group, k in kept.items()},
        "teacher_channels": {group: widths[group] for group in kept},
    }
