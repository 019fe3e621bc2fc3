"""Step-overhead benchmark: what distillation adds to an nnU-Net training step.

In one run, for a 2D and a 3D plan, it measures the median iteration time and the peak memory of
  (a) a student-only step (forward, nnU-Net's deep-supervision Dice+CE loss, backward, clip, SGD step),
  (b) a teacher forward alone (eval, no autograd),
  (c) an HLFD step (teacher forward + student step + HLFD terms through the package's Distiller),
and reports the distillation overhead (c - a - b) / a. The same for multi-scale contrastive KD, and the
multi-teacher step with 1, 2 and 3 teachers, whose slope is the cost of each extra teacher. Each (plan, mode)
runs in a fresh process so that peak memory is its own (CUDA: max allocated; CPU: peak resident set size).

    python -m nnunet_hlfd.benchmark.step_overhead                 # CPU, small plans (or benchmarks/step_overhead.py)
    python -m nnunet_hlfd.benchmark.step_overhead --device cuda   # GPU, nnU-Net's default-sized plans
"""

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from torch import nn

from nnunet_hlfd.methods import HLFD, Distiller
from nnunet_hlfd.methods.base import by_decoder_stage
from nnunet_hlfd.methods.contrastive import MultiScaleContrastiveKD
from nnunet_hlfd.methods.multi_teacher import MultiTeacherKD
from nnunet_hlfd.trainers.distillation import backward_and_step

# (patch, batch, strides, features cap); features per stage = min(32 * 2^i, cap), as nnU-Net's planner does
PLANS = {
    "cpu": {
        "2d": ((128, 128), 4, [[1, 1]] + [[2, 2]] * 5, 512),
        "3d": ((32, 64, 64), 2, [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]], 320),
    },
    "cuda": {  # nnU-Net's default plans for a typical CT dataset (e.g. KiTS): 2D 512x512, 3D 128^3
        "2d": ((512, 512), 12, [[1, 1]] + [[2, 2]] * 7, 512),
        "3d": ((128, 128, 128), 2, [[1, 1, 1]] + [[2, 2, 2]] * 5, 320),
    },
}
NUM_CLASSES = 3
MAX_TEACHERS = 3
DISTILLATION_STEPS = {  # mode -> (method, number of teachers)
    "hlfd_step": (HLFD, 1),
    "contrastive_step": (MultiScaleContrastiveKD, 1),
    **{f"multi_teacher_{k}": (MultiTeacherKD, k) for k in range(1, MAX_TEACHERS + 1)},
}
MODES = ("student_step", "teacher_forward", *DISTILLATION_STEPS)


def build_unet(dim: int, strides, cap: int, width: float) -> nn.Module:
    n = len(strides)
    return PlainConvUNet(
        input_channels=1,
        n_stages=n,
        features_per_stage=[max(1, round(min(32 * 2**i, cap) * width)) for i in range(n)],
        conv_op=nn.Conv3d if dim == 3 else nn.Conv2d,
        kernel_sizes=[[3] * dim] * n,
        strides=strides,
        n_conv_per_stage=[2] * n,
        num_classes=NUM_CLASSES,
        n_conv_per_stage_decoder=[2] * (n - 1),
        conv_bias=True,
        norm_op=nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=True,
    )


def nnunet_loss(n_outputs: int) -> nn.Module:
    weights = [1 / 2**i for i in range(n_outputs)]
    weights[-1] = 0
    weights = [w / sum(weights) for w in weights]
    dc_ce = DC_and_CE_loss(
        {"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False},
        {},
        weight_ce=1,
        weight_dice=1,
        ignore_label=None,
        dice_class=MemoryEfficientSoftDiceLoss,
    )
    return DeepSupervisionWrapper(dc_ce, weights)


class Bench:
    """Student, teacher, distiller, optimiser and one batch for a plan; ``step(mode)`` runs one iteration."""

    def __init__(self, device_name: str, plan: str, only: str | None = None):
        self.device = device = torch.device(device_name)
        patch, batch, strides, cap = PLANS[device_name][plan]
        dim = len(patch)
        torch.manual_seed(0)
        self.student = build_unet(dim, strides, cap, 0.5).to(device)
        # building only what a mode needs keeps its peak memory its own
        needed = MAX_TEACHERS if only is None else DISTILLATION_STEPS.get(only, (None, int(only != "student_step")))[1]
        self.teachers = []
        for k in range(needed):
            torch.manual_seed(1 + k)
            self.teachers.append(build_unet(dim, strides, cap, 1.0).to(device).eval().requires_grad_(False))
        # hooks are inert outside distiller.forward(), so one student serves every mode
        self.distillers = {}
        for mode, (method, count) in DISTILLATION_STEPS.items():
            if only in (None, mode):
                self.distillers[mode] = Distiller(method(), regions=False)
                self.distillers[mode].attach(self.student, self.teachers[:count], NUM_CLASSES)
        self.parameters = list(self.student.parameters())
        self.parameters += [
            p for d in self.distillers.values() if d.adapters is not None for p in d.adapters.parameters()
        ]
        self.optimizer = torch.optim.SGD(self.parameters, 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
        self.scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
        self.loss_fn = nnunet_loss(len(strides) - 1)
        self.x = torch.randn(batch, 1, *patch, device=device)
        seg = torch.randint(0, NUM_CLASSES, (batch, 1, *patch), device=device).float()
        self.targets, grid = [], list(patch)
        for s in strides[:-1]:
            grid = [g // f for g, f in zip(grid, s)]
            self.targets.append(torch.nn.functional.interpolate(seg, size=grid, mode="nearest"))
        self.info = {"patch": list(patch), "batch": batch, "stages": len(strides)}

    def _autocast(self):
        return torch.autocast(self.device.type, enabled=self.device.type == "cuda")

    def step(self, mode: str) -> None:
        if mode == "teacher_forward":
            with torch.no_grad(), self._autocast():
                self.teachers[0](self.x)
            return
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            if mode in self.distillers:
                distiller = self.distillers[mode]
                out, captured = distiller.forward(self.student, self.x)
                valid = {j: None for j in range(len(out))}
                kd = distiller.losses(out, captured, valid, by_decoder_stage(self.targets, len(out) + 1))["total"]
                loss = self.loss_fn(out, self.targets) + kd
            else:
                loss = self.loss_fn(self.student(self.x), self.targets)
        backward_and_step(loss, self.optimizer, self.scaler, self.parameters)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def time_modes(device_name: str, plan: str, iterations: int, warmup: int) -> dict:
    """Median seconds per mode, the modes interleaved so they share the machine's conditions."""
    bench = Bench(device_name, plan)
    times = {m: [] for m in MODES}
    for i in range(warmup + iterations):
        for mode in MODES:
            bench.sync()
            start = time.perf_counter()
            bench.step(mode)
            bench.sync()
            if i >= warmup:
                times[mode].append(time.perf_counter() - start)
    return {**bench.info, **{m: statistics.median(t) for m, t in times.items()}}


def peak_memory(device_name: str, plan: str, mode: str, warmup: int) -> float:
    """Peak memory (MiB) of one mode alone: CUDA max allocated, or the process's peak RSS on CPU."""
    bench = Bench(device_name, plan, only=mode)
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup + 2):
        bench.step(mode)
    bench.sync()
    if bench.device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _subprocess(args: argparse.Namespace, iterations: int, *worker: str) -> dict | float:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nnunet_hlfd.benchmark.step_overhead",
            "--device",
            args.device,
            "--iterations",
            str(iterations),
            "--warmup",
            str(args.warmup),
            "--worker",
            *worker,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--iterations", type=int, default=None, help="timed iterations (default: 20 CPU, 50 GPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--plans", nargs="+", default=["2d", "3d"], choices=["2d", "3d"])
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the per-mode peak memory (one process per mode): timing only"
    )
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    iterations = args.iterations or (20 if args.device == "cpu" else 50)
    if args.worker:
        plan, what = args.worker
        if what == "timing":
            print(json.dumps(time_modes(args.device, plan, iterations, args.warmup)))
        else:
            print(json.dumps(peak_memory(args.device, plan, what, args.warmup)))
        return

    timing, memory_mb = {}, {}
    for plan in args.plans:
        print(f"{plan}: timing the {len(MODES)} modes interleaved ...", file=sys.stderr, flush=True)
        timing[plan] = _subprocess(args, iterations, plan, "timing")
        for mode in [] if args.no_memory else MODES:
            print(f"{plan}: peak memory of {mode} ...", file=sys.stderr, flush=True)
            memory_mb[plan, mode] = _subprocess(args, iterations, plan, mode)

    hardware = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    memory = "peak allocated (MiB)" if args.device == "cuda" else "peak RSS of the process (MiB)"
    print(
        f"Device: {args.device} ({hardware}); torch {torch.__version__}; {iterations} timed iterations after "
        f"{args.warmup} warm-up; student = half-width PlainConvUNet, teachers = full width; methods' defaults.\n"
    )
    print(
        f"| plan | patch × batch | stages | (a) student step (s) | (b) teacher forward (s) | (c) KD step (s) | "
        f"overhead (c−a−b)/a | memory a / b / c: {memory} |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for plan in args.plans:
        t = timing[plan]
        a, b = t["student_step"], t["teacher_forward"]
        for mode in DISTILLATION_STEPS:
            c = t[mode]
            mem = " / ".join(
                f"{memory_mb[plan, m]:.0f}" if memory_mb else "–" for m in ("student_step", "teacher_forward", mode)
            )
            print(
                f"| {plan}, {mode} | {'×'.join(map(str, t['patch']))} × {t['batch']} | {t['stages']} | {a:.3f} | "
                f"{b:.3f} | {c:.3f} | {(c - a - b) / a:+.1%} | {mem} |"
            )
    print(f"\nCost of each extra teacher (multi-teacher KD, slope from 1 to {MAX_TEACHERS} teachers):\n")
    print(f"| plan | time per extra teacher (s) | ÷ student step | memory per extra teacher ({memory}) |")
    print("|---|---|---|---|")
    for plan in args.plans:
        t, first, last = timing[plan], "multi_teacher_1", f"multi_teacher_{MAX_TEACHERS}"
        per_teacher = (t[last] - t[first]) / (MAX_TEACHERS - 1)
        memory_per_teacher = (
            f"{(memory_mb[plan, last] - memory_mb[plan, first]) / (MAX_TEACHERS - 1):.0f}" if memory_mb else "–"
        )
        print(f"| {plan} | {per_teacher:.3f} | {per_teacher / t['student_step']:.2f} | {memory_per_teacher} |")


if __name__ == "__main__":
    main()
