"""Where does a pixel-level distillation loss push the tumour? Gradients per reference class, on real batches.

For the benchmark's converged teacher of one fold and a student of the same fold (its seeded initialisation, as
every random-init row starts; its weights selected from the teacher's, as every ``_init`` row starts, with
``--init teacher``; or a trained checkpoint), on nnU-Net's own training batches (foreground-oversampled patches,
deep-supervision targets), it takes the gradient of each loss with respect to the student's final logits z and
sums it per logit channel over the voxels of each ground-truth class:

    push(c, r) = −Σ_{voxels of class r} ∂L/∂z_c        (what one gradient-descent step adds to logit c there)

for nnU-Net's Dice + CE and for the pixel-level divergences of HLFD's options on the final prediction (per-voxel
KL, class-balanced KL, channel-wise), each at weight 1 and T = 4. A loss that helps the tumour raises the tumour
logit on tumour voxels; a per-voxel mean over a patch that is mostly background does the opposite.

    python benchmarks/kd_gradients.py benchmarks/work/kits19_cpu --fold 0
    python benchmarks/kd_gradients.py benchmarks/work/kits19_cpu --fold 0 --student-checkpoint \\
        benchmarks/work/kits19_cpu/nnUNet_results/Dataset504_KiTSPhantomCpu/nnUNetTrainerStudent__nnUNetPlans__2d/fold_0/checkpoint_final.pth
    python benchmarks/kd_gradients.py benchmarks/work/kits19_cpu --fold 0 --init teacher
"""

import argparse
import copy
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from nnunet_hlfd.benchmark.profiles import PLANS, TEACHER_TRAINER
from nnunet_hlfd.ext_path import EXT_TRAINER_DIR
from nnunet_hlfd.losses import class_balanced_soft_kl, cwd_loss, soft_kl, soft_probabilities, voxel_classes
from nnunet_hlfd.runtime import model_folder

TEMPERATURE = 4.0
STARTS = {"random": "seeded initialisation", "teacher": "inherited from the teacher (l1)"}


def divergences(z: torch.Tensor, teacher: torch.Tensor, classes: torch.Tensor, regions: bool) -> dict:
    """Each pixel-level divergence of the final prediction at weight 1 (the student's logits ``z``)."""
    q = soft_probabilities(teacher, TEMPERATURE, regions)
    return {
        "per-voxel KL (kl)": soft_kl(z, q, TEMPERATURE, regions),
        "class-balanced KL (class_balanced_kl)": class_balanced_soft_kl(z, q, TEMPERATURE, regions, classes),
        "channel-wise (channel_wise, CWD)": cwd_loss(z, teacher, TEMPERATURE),
    }


def pushes(loss: torch.Tensor, z: torch.Tensor, classes: torch.Tensor, num_classes: int) -> np.ndarray:
    """(logit channel, reference class) sums of −∂loss/∂z over the voxels of each class."""
    (gradient,) = torch.autograd.grad(loss, z, retain_graph=True)
    out = np.zeros((z.shape[1], num_classes))
    for r in range(num_classes):
        where = (classes == r).unsqueeze(1)
        out[:, r] = (-(gradient * where).sum(dim=(0, *range(2, gradient.ndim)))).double().numpy()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path, help="a benchmark work folder (nnunet_hlfd benchmark --work)")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--batches", type=int, default=20, help="nnU-Net training batches to sum over")
    parser.add_argument("--student-checkpoint", type=Path, help="default: the student's seeded initialisation")
    parser.add_argument("--init", choices=("random", "teacher"), default="random",
                        help="without a checkpoint: the seeded initialisation, or the weights selected from the "
                        "teacher's (L1, as the _init rows start)")  # fmt: skip
    args = parser.parse_args(argv)
    work = args.work.resolve()
    dataset = next((work / "nnUNet_preprocessed").iterdir()).name
    # the trainers built here for their data loaders and student plan write nothing into the work folder
    os.environ.update(
        nnUNet_raw=str(work / "nnUNet_raw"),
        nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
        nnUNet_results=tempfile.mkdtemp(prefix="kd_gradients_"),
        nnUNet_n_proc_DA="0",
        nnUNet_extTrainer=EXT_TRAINER_DIR,  # the teacher's trainer is one of this package's
    )
    from nnunet_hlfd.teacher import read_teacher, teacher_spec_from_path
    from nnunet_hlfd.trainers import nnUNetTrainerStudent

    configuration = json.loads((work / "profile.json").read_text())["configuration"]
    teacher_folder = model_folder(work / "nnUNet_results", dataset, TEACHER_TRAINER, PLANS, configuration)
    teacher = read_teacher(teacher_spec_from_path(str(teacher_folder), args.fold, "checkpoint_final.pth", "--work"))
    teacher_network = teacher.build_network(torch.device("cpu")).eval()
    plans = json.loads((work / "nnUNet_preprocessed" / dataset / f"{PLANS}.json").read_text())
    dataset_json = json.loads((work / "nnUNet_preprocessed" / dataset / "dataset.json").read_text())
    # the student plan derived from the teacher's, seeded as every benchmark row of this fold starts
    student_plans = copy.deepcopy(plans)
    student_plans["configurations"][configuration]["hlfd"] = {"teacher": str(teacher_folder)}
    student_plans["continue_training"] = False
    trainer = nnUNetTrainerStudent(student_plans, configuration, args.fold, dataset_json, torch.device("cpu"))
    trainer.initialize()
    if args.student_checkpoint:
        weights = torch.load(args.student_checkpoint, map_location="cpu", weights_only=False)["network_weights"]
        trainer.network.load_state_dict(weights)
    elif args.init == "teacher":
        from nnunet_hlfd.inheritance import inherit_weights

        inherit_weights(teacher_network, trainer.network, "l1")
    student = trainer.network.eval()  # no dropout; instance norm uses the batch's own statistics either way
    loader, _ = trainer.get_dataloaders()
    regions = trainer.label_manager.has_regions
    names = ["background", *[k for k, v in dataset_json["labels"].items() if v != 0]]
    totals: dict[str, np.ndarray] = {}
    voxels = np.zeros(len(names))
    for _ in range(args.batches):
        batch = next(loader)
        data, target = batch["data"], batch["target"][0]
        with torch.no_grad():
            teacher_logits = teacher_network(data)[0].float()
        output = student(data)
        z = output[0]
        classes = voxel_classes(target, regions, z.shape[1])
        voxels += np.bincount(classes.flatten().numpy(), minlength=len(names))[: len(names)]
        losses = {"nnU-Net Dice + CE (all outputs)": trainer.loss(output, batch["target"])}
        losses.update(divergences(z, teacher_logits, classes, regions))
        for name, loss in losses.items():
            totals[name] = totals.get(name, 0) + pushes(loss, z, classes, len(names))
    tumour = len(names) - 1
    print(
        f"Fold {args.fold}, {args.batches} nnU-Net training batches ({int(voxels.sum()):,} voxels: "
        + ", ".join(f"{n} {v / voxels.sum():.1%}" for n, v in zip(names, voxels))
        + f"); student: {args.student_checkpoint or STARTS[args.init]}; T = {TEMPERATURE}, weight 1.\n"
    )
    header = [f"push on the {names[tumour]} logit at {n} voxels" for n in names] + [
        f"share of |push| on the {names[tumour]} logit from background voxels"
    ]
    print("| loss | " + " | ".join(header) + " |")
    print("|---|" + "---|" * len(header))
    for name, table in totals.items():
        row = table[tumour]
        share = abs(row[0]) / np.abs(row).sum()
        print(f"| {name} | " + " | ".join(f"{v:+.4f}" for v in row) + f" | {share:.0%} |")
    print(
        "\npush = −Σ ∂L/∂z over the voxels of each ground-truth class, summed over the batches (positive: a gradient "
        "step raises the logit there)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
