"""What every distillation method declares, and the Distiller that runs any of them next to a student.

A method says which stages it taps on each network, which student-side adapters it needs and how its loss
is computed from the captured tensors. The :class:`Distiller` owns the frozen teacher, the recorders and
the adapters, and turns one training batch into the method's loss terms, so a trainer (or a benchmark)
adds distillation to a step in three calls.
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from nnunet_hlfd.capture import FeatureRecorder, StageLayoutError, UNetLayout, unet_layout, unet_recorder


@dataclass
class Captured:
    """Tensors of one forward pass, keyed by stage index.

    ``logits[j]`` are the deep-supervision logits of decoder stage j (j = 0 is the lowest resolution,
    j = n-2 the network's final prediction).
    """

    encoder: dict[int, torch.Tensor] = field(default_factory=dict)
    decoder: dict[int, torch.Tensor] = field(default_factory=dict)
    logits: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Taps:
    encoder: tuple[int, ...] = ()
    decoder: tuple[int, ...] = ()


class DistillationMethod(ABC):
    """A distillation method as a declaration; subclasses hold no tensors and build no modules per call."""

    name: str
    term_names: tuple[str, ...]

    @abstractmethod
    def student_taps(self, n_stages: int) -> Taps: ...

    @abstractmethod
    def teacher_taps(self, n_stages: int) -> Taps: ...

    def build_adapters(self, student: UNetLayout, teacher: UNetLayout, num_classes: int) -> nn.Module | None:
        """Trainable student-side modules the loss needs, built once; None when there are none."""
        return None

    @abstractmethod
    def loss(
        self,
        student: Captured,
        teacher: Captured,
        adapters: nn.Module | None,
        valid: dict[int, torch.Tensor | None],
        regions: bool,
    ) -> dict[str, torch.Tensor]:
        """Loss terms by name (``term_names``) plus ``'total'``, the weighted sum added to nnU-Net's loss."""


def _logits_by_decoder_stage(output: torch.Tensor | Sequence[torch.Tensor], n_stages: int) -> dict[int, torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return {n_stages - 2: output}
    return {n_stages - 2 - k: o for k, o in enumerate(output)}


def valid_masks(
    targets: Sequence[torch.Tensor], n_stages: int, ignore_label: int | None, has_regions: bool
) -> dict[int, torch.Tensor | None]:
    """Per decoder stage, False where nnU-Net's ignore label is (None when the dataset has none).

    Uses nnU-Net's own deep-supervision targets, which are already on each output's grid. For regions the
    ignore label arrives as an extra last target channel (as in nnU-Net's DC_and_BCE_loss).
    """
    masks: dict[int, torch.Tensor | None] = {}
    for k, target in enumerate(targets):
        j = n_stages - 2 - k
        if ignore_label is None:
            masks[j] = None
        elif has_regions:
            masks[j] = target[:, -1] == 0
        else:
            masks[j] = target[:, 0] != ignore_label
    return masks


class Distiller:
    """Frozen teacher + recorders + adapters for one method, attached to a student by :meth:`attach`."""

    def __init__(self, method: DistillationMethod, regions: bool):
        self.method = method
        self.regions = regions
        self.student_layout: UNetLayout | None = None
        self.student_recorder: FeatureRecorder | None = None
        self.teacher: nn.Module | None = None
        self.teacher_recorder: FeatureRecorder | None = None
        self.adapters: nn.Module | None = None

    def attach(self, student: nn.Module, teacher: nn.Module, num_classes: int) -> None:
        """Hook the student, freeze (eval mode, no gradients) and hook the teacher, build the adapters.

        Call once, before torch.compile and DDP wrapping of the student; adapters may depend on both layouts
        (e.g. FitNets maps student channels to teacher channels).
        """
        if self.student_recorder is not None:
            return
        self.student_layout, teacher_layout = unet_layout(student), unet_layout(teacher)
        if teacher_layout.n_stages != self.student_layout.n_stages:
            raise StageLayoutError(
                f"teacher has {teacher_layout.n_stages} stages, student {self.student_layout.n_stages}: they must align"
            )
        n = self.student_layout.n_stages
        taps = self.method.student_taps(n)
        self.student_recorder = unet_recorder(student, taps.encoder, taps.decoder)
        teacher.eval()
        teacher.requires_grad_(False)
        self.teacher = teacher
        taps = self.method.teacher_taps(n)
        self.teacher_recorder = unet_recorder(teacher, taps.encoder, taps.decoder)
        self.adapters = self.method.build_adapters(self.student_layout, teacher_layout, num_classes)

    def wrap_adapters_for_ddp(self, device: torch.device, local_rank: int) -> None:
        """Under DDP, wrap the adapters on their own: rank 0's initial weights are broadcast and gradients are
        averaged, so they stay identical on every rank. The student is DDP-wrapped by nnU-Net; the teacher
        never is (each rank holds a frozen copy)."""
        from torch.nn.parallel import DistributedDataParallel

        if self.adapters is not None and any(p.requires_grad for p in self.adapters.parameters()):
            device_ids = [local_rank] if device.type == "cuda" else None
            self.adapters = DistributedDataParallel(self.adapters, device_ids=device_ids)

    @property
    def n_stages(self) -> int:
        return self.student_layout.n_stages

    @torch.no_grad()
    def run_teacher(self, data: torch.Tensor) -> Captured:
        """Teacher forward without autograd; call it inside the student's autocast context."""
        self.teacher.eval()  # stays in eval mode whatever the trainer does to its own network
        with self.teacher_recorder.recording() as outputs:
            output = self.teacher(data)
        captured = self._captured(outputs, output)
        self.teacher_recorder.clear()
        return captured

    def forward(self, student: nn.Module, data: torch.Tensor):
        """Teacher forward (no autograd), then ``student(data)`` with the student's taps recorded.

        Pass the module nnU-Net trains (DDP- or compile-wrapped): calling its inner module would bypass DDP's
        gradient synchronisation. Returns (student output, captured teacher).
        """
        teacher = self.run_teacher(data)
        with self.student_recorder.recording():
            output = student(data)
        return output, teacher

    def losses(
        self, student_output, teacher: Captured, valid: dict[int, torch.Tensor | None]
    ) -> dict[str, torch.Tensor]:
        """The method's loss terms for the last recorded student forward; releases the recorded tensors."""
        student = self._captured(self.student_recorder.outputs, student_output)
        try:
            return self.method.loss(student, teacher, self.adapters, valid, self.regions)
        finally:
            self.student_recorder.clear()

    def _captured(self, outputs: dict[str, torch.Tensor], network_output) -> Captured:
        captured = Captured(logits=_logits_by_decoder_stage(network_output, self.n_stages))
        for name, tensor in outputs.items():
            part, index = name.split(".")
            getattr(captured, part)[int(index)] = tensor
        return captured
