"""What every distillation method declares, and the Distiller that runs any of them next to a student.

A method says which stages it taps on each network, which student-side adapters it needs and how its loss
is computed from the captured tensors. The :class:`Distiller` owns the frozen teacher, the recorders and
the adapters, and turns one training batch into the method's loss terms, so a trainer (or a benchmark)
adds distillation to a step in three calls.
"""

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nnunet_hlfd.capture import FeatureRecorder, StageLayoutError, UNetLayout, unet_layout, unet_recorder


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """nnU-Net's weights, highest resolution first: 1, 1/2, 1/4, ..., the lowest output 0, normalised to sum 1."""
    weights = [1 / 2**i for i in range(n_outputs)]
    weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def trained_decoder_stages(n_stages: int) -> tuple[int, ...]:
    """The decoder stages whose deep-supervision head nnU-Net trains (loss weight > 0), lowest resolution first.

    nnU-Net weighs the lowest-resolution output 0 (1e-6 under DDP without compile), so ``decoder.seg_layers[0]``
    keeps its random initialisation, in the teacher as in the student: no method may read it.
    """
    weights = deep_supervision_weights(n_stages - 1)  # output k is decoder stage n-2-k
    return tuple(sorted(n_stages - 2 - k for k, w in enumerate(weights) if w > 0))


@dataclass
class Captured:
    """Tensors of one forward pass of a U-Net with ``n_stages`` encoder stages, keyed by stage index.

    ``logits[j]`` are the deep-supervision logits of decoder stage j (j = 0 is the lowest resolution,
    j = n-2 = :attr:`final` the network's final prediction), for the stages whose head nnU-Net trains only
    (:func:`trained_decoder_stages`): the untrained lowest head is never handed to a method.
    """

    n_stages: int
    encoder: dict[int, torch.Tensor] = field(default_factory=dict)
    decoder: dict[int, torch.Tensor] = field(default_factory=dict)
    logits: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def final(self) -> int:
        """The decoder stage of the network's final prediction."""
        return self.n_stages - 2


@dataclass(frozen=True)
class Taps:
    encoder: tuple[int, ...] = ()
    decoder: tuple[int, ...] = ()


# What a method's loss() may read besides the captured tensors, the adapters and ``regions``, each passed by name:
# "valid": per decoder stage, False where nnU-Net's ignore label is (None without one);
# "targets": nnU-Net's deep-supervision targets per decoder stage (a method declaring it has a ``targets`` parameter).
LOSS_INPUTS = ("valid", "targets")


class DistillationMethod(ABC):
    """A distillation method as a declaration; subclasses hold no tensors and build no modules per call."""

    name: str
    term_names: tuple[str, ...]
    inputs: tuple[str, ...] = ("valid",)  # of LOSS_INPUTS: what loss() reads (an instance may declare its own)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        unknown = set(cls.inputs) - set(LOSS_INPUTS)
        if unknown:
            raise TypeError(f"{cls.__name__}.inputs: {sorted(unknown)} are not loss inputs {LOSS_INPUTS}")
        if "targets" not in inspect.signature(cls.loss).parameters:
            raise TypeError(f"{cls.__name__}.loss has no targets parameter: the Distiller passes it by name")

    @abstractmethod
    def student_taps(self, n_stages: int) -> Taps: ...

    @abstractmethod
    def teacher_taps(self, n_stages: int) -> Taps: ...

    def build_adapters(self, student: UNetLayout, teacher: UNetLayout, num_classes: int) -> nn.Module | None:
        """Trainable student-side modules the loss needs, built once; None when there are none."""
        return None

    def summarize_teacher(self, captured: Captured, regions: bool) -> Any:
        """What the loss needs of one teacher's forward pass. Multi-teacher methods reduce it here, so that
        the next teacher runs without the previous one's feature maps in memory."""
        return captured

    def weight_at(self, progress: float) -> float:
        """Factor on ``total`` at this point of training (``progress`` = epoch / epochs, 0 at the start); a method
        with a ramp-up of its distillation weights overrides it."""
        return 1.0

    def combine_teachers(self, summaries: list, regions: bool) -> Any:
        """The ``teacher`` argument of :meth:`loss`, from every teacher's summary (in the teachers' order)."""
        if len(summaries) != 1:
            raise ValueError(f"{type(self).__name__} distils one teacher, got {len(summaries)}")
        return summaries[0]

    @abstractmethod
    def loss(
        self,
        student: Captured,
        teacher: Captured,
        adapters: nn.Module | None,
        valid: dict[int, torch.Tensor | None],
        regions: bool,
        targets: dict[int, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms by name (``term_names``) plus ``'total'``, the weighted sum added to nnU-Net's loss.

        ``targets`` (nnU-Net's deep-supervision targets, keyed by decoder stage like ``valid``) is given to methods
        whose :attr:`inputs` declare it, None to the others.
        """


def by_decoder_stage(outputs: torch.Tensor | Sequence[torch.Tensor], n_stages: int) -> dict[int, torch.Tensor]:
    """Deep-supervision outputs or targets (nnU-Net lists the highest resolution first) keyed by decoder stage
    j; a single tensor is the final prediction's."""
    if isinstance(outputs, torch.Tensor):
        return {n_stages - 2: outputs}
    return {n_stages - 2 - k: o for k, o in enumerate(outputs)}


def valid_masks(
    targets: Sequence[torch.Tensor], n_stages: int, ignore_label: int | None, has_regions: bool
) -> dict[int, torch.Tensor | None]:
    """Per decoder stage, False where nnU-Net's ignore label is (None when the dataset has none).

    Uses nnU-Net's own deep-supervision targets, which are already on each output's grid. For regions the
    ignore label arrives as an extra last target channel (as in nnU-Net's DC_and_BCE_loss).
    """
    masks: dict[int, torch.Tensor | None] = {}
    for j, target in by_decoder_stage(list(targets), n_stages).items():
        if ignore_label is None:
            masks[j] = None
        elif has_regions:
            masks[j] = target[:, -1] == 0
        else:
            masks[j] = target[:, 0] != ignore_label
    return masks


class Distiller:
    """Frozen teacher(s) + recorders + adapters for one method, attached to a student by :meth:`attach`."""

    def __init__(self, method: DistillationMethod, regions: bool):
        self.method = method
        self.regions = regions
        self.student_layout: UNetLayout | None = None
        self.student_recorder: FeatureRecorder | None = None
        self.teachers: list[nn.Module] = []
        self.teacher_recorders: list[FeatureRecorder] = []
        self.adapters: nn.Module | None = None

    def attach(self, student: nn.Module, teacher: nn.Module | Sequence[nn.Module], num_classes: int) -> None:
        """Hook the student, freeze (eval mode, no gradients) and hook the teacher(s), build the adapters.

        Call once, before torch.compile and DDP wrapping of the student; adapters may depend on both layouts
        (e.g. FitNets maps student channels to the first teacher's channels).
        """
        if self.student_recorder is not None:
            return
        teachers = [teacher] if isinstance(teacher, nn.Module) else list(teacher)
        self.student_layout = unet_layout(student)
        n = self.student_layout.n_stages
        teacher_layouts = [unet_layout(t) for t in teachers]
        for k, layout in enumerate(teacher_layouts):
            if layout.n_stages != n:
                which = "teacher" if len(teachers) == 1 else f"teacher {k}"
                raise StageLayoutError(f"{which} has {layout.n_stages} stages, student {n}: they must align")
        taps = self.method.student_taps(n)
        self.student_recorder = unet_recorder(student, taps.encoder, taps.decoder)
        taps = self.method.teacher_taps(n)
        for t in teachers:
            t.eval()
            t.requires_grad_(False)
            self.teacher_recorders.append(unet_recorder(t, taps.encoder, taps.decoder))
        self.teachers = teachers
        self.adapters = self.method.build_adapters(self.student_layout, teacher_layouts[0], num_classes)

    @property
    def teacher(self) -> nn.Module | None:
        """The (first) teacher."""
        return self.teachers[0] if self.teachers else None

    def wrap_adapters_for_ddp(self, device: torch.device, local_rank: int) -> None:
        """Under DDP, wrap the adapters on their own: rank 0's initial weights are broadcast and gradients are
        averaged, so they stay identical on every rank. The student is DDP-wrapped by nnU-Net; the teachers
        never are (each rank holds frozen copies)."""
        from torch.nn.parallel import DistributedDataParallel

        if self.adapters is not None and any(p.requires_grad for p in self.adapters.parameters()):
            device_ids = [local_rank] if device.type == "cuda" else None
            self.adapters = DistributedDataParallel(self.adapters, device_ids=device_ids)

    @property
    def n_stages(self) -> int:
        return self.student_layout.n_stages

    @torch.no_grad()
    def run_teacher(self, data: torch.Tensor):
        """The teachers' forward passes without autograd, one after another (each reduced by the method's
        ``summarize_teacher`` before the next runs), combined; call it inside the student's autocast context."""
        summaries = []
        for teacher, recorder in zip(self.teachers, self.teacher_recorders):
            teacher.eval()  # stays in eval mode whatever the trainer does to its own network
            with recorder.recording() as outputs:
                output = teacher(data)
            summaries.append(self.method.summarize_teacher(self._captured(outputs, output), self.regions))
            recorder.clear()
            del output
        return self.method.combine_teachers(summaries, self.regions)

    def forward(self, student: nn.Module, data: torch.Tensor):
        """Teacher forward (no autograd), then ``student(data)`` with the student's taps recorded.

        Pass the module nnU-Net trains (DDP- or compile-wrapped): calling its inner module would bypass DDP's
        gradient synchronisation. Returns (student output, what the teachers give the loss).
        """
        teacher = self.run_teacher(data)
        with self.student_recorder.recording():
            output = student(data)
        return output, teacher

    def losses(
        self,
        student_output,
        teacher,
        valid: dict[int, torch.Tensor | None],
        targets: dict[int, torch.Tensor] | None = None,
        progress: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """The method's loss terms for the last recorded student forward; releases the recorded tensors.

        ``targets``: nnU-Net's deep-supervision targets by decoder stage (see :func:`by_decoder_stage`), needed
        by methods that declare them in :attr:`~DistillationMethod.inputs`. ``progress`` (epoch / epochs) scales
        ``total`` by the method's :meth:`~DistillationMethod.weight_at`; the other terms are returned unscaled.
        """
        student = self._captured(self.student_recorder.outputs, student_output)
        wants_targets = "targets" in self.method.inputs
        if wants_targets and targets is None:
            raise ValueError(f"{type(self.method).__name__} needs the segmentation targets")
        try:
            terms = self.method.loss(
                student, teacher, self.adapters, valid, self.regions, targets=targets if wants_targets else None
            )
        finally:
            self.student_recorder.clear()
        scale = self.method.weight_at(progress)
        return terms if scale == 1.0 else {**terms, "total": terms["total"] * scale}

    def _captured(self, outputs: dict[str, torch.Tensor], network_output) -> Captured:
        trained = trained_decoder_stages(self.n_stages)
        logits = by_decoder_stage(network_output, self.n_stages)
        captured = Captured(self.n_stages, logits={j: x for j, x in logits.items() if j in trained})
        for name, tensor in outputs.items():
            part, index = name.split(".")
            getattr(captured, part)[int(index)] = tensor
        return captured
