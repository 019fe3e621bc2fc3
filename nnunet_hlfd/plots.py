"""Figures shared by training and evaluation: the style, an atomic PNG write and the training curves.

The trainers plot their distillation terms every epoch; this module imports nothing of evaluation (no SimpleITK,
no predictor), so that every ``nnUNetv2_train`` lookup of a trainer stays light.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from nnunet_hlfd.errors import EvaluationError
from nnunet_hlfd.files import replaced_atomically

# nnU-Net's logger sets a large seaborn font scale globally; these figures use their own sizes
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
}


def save_figure(fig, path: Path) -> Path:
    with replaced_atomically(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


# ---- training curves -------------------------------------------------------------------------------------
TRAINING_KEYS = ("train_losses", "val_losses", "ema_fg_dice")


def plot_training_curves(
    runs: dict[str, dict[str, list]], output: Path, keys: list[str] | None = None, title: str = ""
) -> Path:
    """One panel per logged quantity (distillation terms ``kd_*`` first, then nnU-Net's losses and EMA
    pseudo Dice), one line per run; distillation terms on a log scale."""
    if keys is None:
        logged = {k for log in runs.values() for k in log}
        keys = sorted(k for k in logged if k.startswith("kd_")) + [k for k in TRAINING_KEYS if k in logged]
    if not keys:
        raise EvaluationError("the logs hold no distillation terms or losses to plot")
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    colours = dict(zip(runs, plt.rcParams["axes.prop_cycle"].by_key()["color"] * len(runs)))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.2 * rows + 0.4), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            for run, log in runs.items():
                values = np.asarray(log.get(key, []), dtype=np.float64)
                if values.size:
                    ax.plot(np.arange(values.size), values, label=run, color=colours[run], linewidth=1.8)
            ax.set_title(key[3:] if key.startswith("kd_") else key)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            positive = [v for log in runs.values() for v in log.get(key, []) if v == v]
            if key.startswith("kd_") and positive and min(positive) > 0:
                ax.set_yscale("log")
        for ax in list(axes.flat)[len(keys) :]:
            ax.axis("off")
        handles = [plt.Line2D([], [], color=colours[run], linewidth=1.8, label=run) for run in runs]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False)
        if title:
            fig.suptitle(title)
        # fixed margins (inches) rather than tight_layout, which measures every tick label: the trainers draw this
        # figure after every epoch, and tight_layout took half of its time
        height = 3.2 * rows + 0.4
        fig.subplots_adjust(
            left=0.8 / (4.5 * columns), right=1 - 0.15 / (4.5 * columns), bottom=(0.4 + 0.45) / height,
            top=1 - (0.55 if title else 0.3) / height, wspace=0.3, hspace=0.55,
        )  # fmt: skip
        return save_figure(fig, output)
