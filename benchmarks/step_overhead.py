"""Step-overhead benchmark: what distillation adds to an nnU-Net training step.

In one run, for a 2D and a 3D plan, it measures the median iteration time and the peak memory of
  (a) a student-only step (forward, nnU-Net's deep-supervision Dice+CE loss, backward, clip, SGD step),
  (b) a teacher forward alone (eval, no autograd),
  (c) an HLFD step (teacher forward + student step + HLFD terms through the package's Distiller),
and reports the distillation overhead (c - a - b) / a. Each (plan, mode) runs in a fresh process so that peak
memory is its own (CUDA: max allocated; CPU: peak resident set size of the process).

    python benchmarks/step_overhead.py                 # CPU, small plans
    python benchmarks/step_overhead.py --device cuda   # GPU, nnU-Net's default-sized plans
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
MODES = ("student_step", "teacher_forward", "hlfd_step")


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


def worker(device_name: str, plan: str, mode: str, iterations: int, warmup: int) -> dict:
    device = torch.device(device_name)
    patch, batch, strides, cap = PLANS[device_name][plan]
    dim = len(patch)
    torch.manual_seed(0)
    student = build_unet(dim, strides, cap, 0.5).to(device)
    teacher = build_unet(dim, strides, cap, 1.0).to(device).eval().requires_grad_(False)
    distiller = None
    if mode == "hlfd_step":
        distiller = Distiller(HLFD(), regions=False)
        distiller.attach_student(student, NUM_CLASSES)
        distiller.attach_teacher(teacher)
    optimizer = torch.optim.SGD(student.parameters(), 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    loss_fn = nnunet_loss(len(strides) - 1)
    x = torch.randn(batch, 1, *patch, device=device)
    targets, grid = [], list(patch)
    seg = torch.randint(0, NUM_CLASSES, (batch, 1, *patch), device=device).float()
    for s in strides[:-1]:
        grid = [g // f for g, f in zip(grid, s)]
        targets.append(torch.nn.functional.interpolate(seg, size=grid, mode="nearest"))

    def autocast():
        return torch.autocast(device.type, enabled=device.type == "cuda")

    def step():
        if mode == "teacher_forward":
            with torch.no_grad(), autocast():
                teacher(x)
            return
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            if distiller is not None:
                captured = distiller.run_teacher(x)
                with distiller.student_recording():
                    out = student(x)
            else:
                out = student(x)
            loss = loss_fn(out, targets)
            if distiller is not None:
                loss = loss + distiller.losses(out, captured, {j: None for j in range(len(out))})["total"]
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(student.parameters(), 12)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 12)
            optimizer.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "plan": plan,
        "mode": mode,
        "median_s": statistics.median(times),
        "peak_mb": peak_mb,
        "patch": list(patch),
        "batch": batch,
        "stages": len(strides),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--iterations", type=int, default=None, help="timed iterations (default: 10 CPU, 30 GPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--plans", nargs="+", default=["2d", "3d"], choices=["2d", "3d"])
    parser.add_argument("--worker", nargs=2, metavar=("PLAN", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    iterations = args.iterations or (10 if args.device == "cpu" else 30)
    if args.worker:
        print(json.dumps(worker(args.device, *args.worker, iterations, args.warmup)))
        return

    results = {}
    for plan in args.plans:
        for mode in MODES:
            print(f"{plan} {mode} ...", file=sys.stderr, flush=True)
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--device",
                    args.device,
                    "--iterations",
                    str(iterations),
                    "--warmup",
                    str(args.warmup),
                    "--worker",
                    plan,
                    mode,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results[plan, mode] = json.loads(out.stdout.strip().splitlines()[-1])

    hardware = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    memory = "peak allocated (MiB)" if args.device == "cuda" else "peak RSS of the process (MiB)"
    print(
        f"Device: {args.device} ({hardware}); torch {torch.__version__}; {iterations} timed iterations after "
        f"{args.warmup} warm-up; student = half-width PlainConvUNet, teacher = full width; HLFD defaults.\n"
    )
    print(
        f"| plan | patch × batch | stages | (a) student step (s) | (b) teacher forward (s) | (c) HLFD step (s) | "
        f"overhead (c−a−b)/a | memory a / b / c: {memory} |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for plan in args.plans:
        a, b, c = (results[plan, m] for m in MODES)
        overhead = (c["median_s"] - a["median_s"] - b["median_s"]) / a["median_s"]
        print(
            f"| {plan} | {'×'.join(map(str, a['patch']))} × {a['batch']} | {a['stages']} | {a['median_s']:.3f} | "
            f"{b['median_s']:.3f} | {c['median_s']:.3f} | {overhead:+.1%} | "
            f"{a['peak_mb']:.0f} / {b['peak_mb']:.0f} / {c['peak_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
