"""The prepared GPU check: one command that records, on one GPU within about 8 minutes,

1. the step-overhead benchmark with nnU-Net's default-sized 2D and 3D plans under AMP (timing; the peak memory per
   mode would take a process each);
2. a short HLFD training on ``3d_fullres`` through ``nnUNetv2_train -device``: a teacher, an HLFD student stopped
   after epoch 1, resumed with ``--c`` to epoch 2, then ``nnUNetv2_predict -device``;
3. ``nnUNet_compile=t`` with a hooked student (HLFD at width 0.25, its feature taps registered before the compiled
   first call);
4. the efficiency table (``nnunet_hlfd efficiency``) of teacher, w0.5 and w0.25 with PyTorch and ONNX Runtime
   (the CUDA provider where the installed onnxruntime has it; ONNX Runtime on the CPU otherwise);
5. ONNX Runtime's IO binding (tiles and logits stay on the GPU) against host copies, on the w0.5 student's bundle
   (:mod:`nnunet_hlfd.benchmark.io_binding`), on the device when ONNX Runtime's CUDA provider is there;
6. the same bundle exported with ``--quantize fp16`` against the float one (time and Dice, ONNX Runtime on the same
   device).

``benchmarks/gpu_check.sh`` runs it; ``--device cpu --quick`` runs the same steps on tiny schedules on a CPU, which is
how CI keeps it working. Every step is run even if an earlier one failed (its exit code is recorded); the report,
``gpu_check.md`` in ``--out``, lists each step's command, exit code, duration and output tables, and the command
exits non-zero if any step failed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

DATASET_ID = 995
DATASET_NAME = "HLFDGpuCheck"
CONFIGURATION = "3d_fullres"
TEACHER = "nnUNetTrainerHLFDTeacher"
WIDTH_025_PLANS = "nnUNetPlans_w025"
CLI = [sys.executable, "-m", "nnunet_hlfd.cli.main"]  # this package's command, from this Python


def _schedule(quick: bool) -> dict:
    return {"epochs": 2, "iterations": 2 if quick else 25, "val_iterations": 1 if quick else 5, "mirroring": True}


class Check:
    """Runs the steps, each a command with its output in a log, and writes the report."""

    def __init__(self, device: str, quick: bool, out: Path) -> None:
        from nnunet_hlfd.runtime import nnunet_environment

        self.device, self.quick, self.out = device, quick, out
        self.work = out / "work"
        self.env = nnunet_environment(self.work)
        self.env.update(nnUNet_compile="f")  # each step that compiles says so
        # data augmentation workers: none on a CPU (the check's own processes share its cores); planning needs >= 1
        self.training_env = {"nnUNet_n_proc_DA": "0" if device == "cpu" else "8"}
        self.steps: list[dict] = []

    def run(self, name: str, args: list[str], extra_env: dict | None = None, expect: int = 0) -> int:
        from nnunet_hlfd.runtime import run_nnunet

        log = self.out / "logs" / f"{len(self.steps):02d}_{name}.log"
        print(f"[gpu_check] {name}: {' '.join(args)}", flush=True)
        code, seconds = run_nnunet(args, {**self.env, **(extra_env or {})}, log)
        ok = code == expect
        print(f"[gpu_check]   exit {code} ({'ok' if ok else f'expected {expect}'}), {seconds:.0f} s", flush=True)
        self.steps.append({"name": name, "command": " ".join(args), "env": extra_env or {}, "exit_code": code,
                           "ok": ok, "seconds": round(seconds, 1), "log": str(log)})  # fmt: skip
        return code

    def train(
        self,
        name: str,
        trainer: str,
        *extra: str,
        plans: str = "nnUNetPlans",
        extra_env: dict | None = None,
        expect: int = 0,
    ) -> int:
        args = ["nnUNetv2_train", str(DATASET_ID), CONFIGURATION, "0", "-tr", trainer, "-p", plans,
                "-device", self.device, *extra]  # fmt: skip
        return self.run(name, args, {**self.training_env, **(extra_env or {})}, expect)

    # ---- the steps -------------------------------------------------------------------------------------------
    def step_overhead(self) -> None:
        args = [sys.executable, "-m", "nnunet_hlfd.benchmark.step_overhead", "--device", self.device]
        # timing only: the peak memory of each mode is one more process each (20 starts, minutes of the 8); the
        # efficiency step reports the peak memory of inference
        args += ["--iterations", "1", "--warmup", "1"] if self.quick else ["--iterations", "10", "--warmup", "3"]
        args.append("--no-memory")
        self.run("step_overhead", args)

    def dataset(self) -> None:
        from nnunet_hlfd.demo.synthetic import make_synthetic_dataset
        from nnunet_hlfd.runtime import SCHEDULE_KEY, plan_schedule

        shape = (16, 32, 32) if self.quick else (64, 128, 128)
        make_synthetic_dataset(self.work / "nnUNet_raw", DATASET_ID, DATASET_NAME, 6, 2, shape=shape)
        args = ["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", CONFIGURATION, "-np", "2", "-npfp", "2"]
        if self.run("plan_and_preprocess", args) != 0:
            return
        plans_file = self.work / "nnUNet_preprocessed" / f"Dataset{DATASET_ID}_{DATASET_NAME}" / "nnUNetPlans.json"
        plans = json.loads(plans_file.read_text())
        configuration = plans["configurations"][CONFIGURATION]
        plan_schedule(configuration, {SCHEDULE_KEY: _schedule(self.quick)}, TEACHER)
        if self.quick:  # a narrow network: the same code paths at a fraction of a CPU's time
            kwargs = configuration["architecture"]["arch_kwargs"]
            kwargs["features_per_stage"] = [min(8 * 2**i, 64) for i in range(kwargs["n_stages"])]
            configuration["batch_size"] = 2
        plans_file.write_text(json.dumps(plans, indent=2))
        # the w0.25 student: the same plans with the width option (same preprocessed data, schedule, split)
        narrow = json.loads(json.dumps(plans))
        narrow["plans_name"] = WIDTH_025_PLANS
        narrow["configurations"][CONFIGURATION]["hlfd"].update(width=0.25, teacher_plans="nnUNetPlans")
        (plans_file.parent / f"{WIDTH_025_PLANS}.json").write_text(json.dumps(narrow, indent=2))

    def training(self) -> None:
        from nnunet_hlfd.runtime import INTERRUPTED_EXIT_CODE, STOP_AFTER_EPOCH_ENV

        self.train("teacher", TEACHER)
        self.train("hlfd_interrupted", "nnUNetTrainerHLFD", extra_env={STOP_AFTER_EPOCH_ENV: "1"},
                   expect=INTERRUPTED_EXIT_CODE)  # fmt: skip
        self.train("hlfd_resumed", "nnUNetTrainerHLFD", "--c")
        raw = self.work / "nnUNet_raw" / f"Dataset{DATASET_ID}_{DATASET_NAME}"
        self.run("predict", ["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(self.out / "predictions"),
                             "-d", str(DATASET_ID), "-c", CONFIGURATION, "-f", "0", "-tr", "nnUNetTrainerHLFD",
                             "-device", self.device, "--disable_tta", "-npp", "1", "-nps", "1"])  # fmt: skip
        # nnU-Net compiles on a GPU only; on the CPU this step checks that the variable changes nothing else
        self.train("hlfd_w025_compiled", "nnUNetTrainerHLFD", plans=WIDTH_025_PLANS, extra_env={"nnUNet_compile": "t"})

    def efficiency(self) -> None:
        from nnunet_hlfd.runtime import model_folder

        results = self.work / "nnUNet_results"
        dataset = f"Dataset{DATASET_ID}_{DATASET_NAME}"
        models = [
            f"teacher={model_folder(results, dataset, TEACHER, 'nnUNetPlans', CONFIGURATION)}",
            f"w0.5={model_folder(results, dataset, 'nnUNetTrainerHLFD', 'nnUNetPlans', CONFIGURATION)}",
            f"w0.25={model_folder(results, dataset, 'nnUNetTrainerHLFD', WIDTH_025_PLANS, CONFIGURATION)}",
        ]
        raw = self.work / "nnUNet_raw" / dataset
        common = ["-i", str(raw / "imagesTs"), "-r", str(raw / "labelsTs"), "--cases", "0", "--tta", "off", "on",
                  "--repeats", "1" if self.quick else "3"]  # fmt: skip
        command = [*CLI, "efficiency", *models, *common]
        on_device = ["pytorch"]
        if self._onnx_device() == self.device:
            on_device.append("onnx")
        self.run(f"efficiency_{self.device}", [*command, "--backend", *on_device, "--device", self.device,
                                               "-o", str(self.out / f"efficiency_{self.device}")])  # fmt: skip
        if "onnx" not in on_device:  # this onnxruntime has no CUDA provider: both backends on the CPU, side by side
            self.run("efficiency_cpu", [*command, "--backend", "pytorch", "onnx", "--device", "cpu",
                                        "-o", str(self.out / "efficiency_cpu")])  # fmt: skip

    def io_binding(self) -> None:
        from nnunet_hlfd.runtime import model_folder

        dataset = f"Dataset{DATASET_ID}_{DATASET_NAME}"
        student = model_folder(self.work / "nnUNet_results", dataset, "nnUNetTrainerHLFD", "nnUNetPlans", CONFIGURATION)
        bundle = self.out / "bundle_w05"
        if self.run("export_w05", [*CLI, "export", str(student), "-f", "0", "-o", str(bundle)]) != 0:
            return
        device = self._onnx_device()
        self.run(f"io_binding_{device}", [sys.executable, "-m", "nnunet_hlfd.benchmark.io_binding", str(bundle),
                                          "--device", device, "--repeats", "3" if self.quick else "20"])  # fmt: skip
        self.fp16(student, bundle, device)

    def fp16(self, student: Path, bundle: Path, device: str) -> None:
        """The w0.5 bundle exported again with float16 networks, against the float one on ONNX Runtime: time and
        Dice on the test cases (fp16 is for GPUs: on the CPU provider the step only checks that it runs)."""
        fp16 = self.out / "bundle_w05_fp16"
        export = [*CLI, "export", str(student), "-f", "0", "-o", str(fp16), "--quantize", "fp16"]
        if self.run("export_w05_fp16", export) != 0:
            return
        raw = self.work / "nnUNet_raw" / f"Dataset{DATASET_ID}_{DATASET_NAME}"
        measure = [*CLI, "efficiency", f"float={bundle}", f"fp16={fp16}", "--backend", "onnx", "--device", device,
                   "-i", str(raw / "imagesTs"), "-r", str(raw / "labelsTs"), "--cases", "0",
                   "--repeats", "1" if self.quick else "3"]  # fmt: skip
        self.run(f"efficiency_fp16_{device}", [*measure, "-o", str(self.out / f"efficiency_fp16_{device}")])

    def _onnx_device(self) -> str:
        """The device ONNX Runtime runs on: the GPU only where the installed onnxruntime has the CUDA provider (the
        lent machine's is a CPU build unless onnxruntime-gpu is carried there)."""
        import onnxruntime

        if self.device == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return "cuda"
        return "cpu"

    # ---- the report ------------------------------------------------------------------------------------------
    def report(self, started: float) -> bool:
        import torch

        from nnunet_hlfd.evaluation.efficiency import hardware

        lines = [
            "# GPU check", "",
            f"Command: `bash benchmarks/gpu_check.sh --device {self.device}{' --quick' if self.quick else ''}`; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; total {time.time() - started:.0f} s.",
            f"Hardware: {hardware([self.device])}; Python {platform.python_version()}; "
            f"CUDA available: {torch.cuda.is_available()}.", "",
            "| step | exit code | s | command |", "|---|---|---|---|",
        ]  # fmt: skip
        for step in self.steps:
            env = " ".join(f"{k}={v}" for k, v in step["env"].items())
            mark = "" if step["ok"] else " **FAILED**"
            lines.append(f"| {step['name']} | {step['exit_code']}{mark} | {step['seconds']:.0f} | "
                         f"`{(env + ' ') if env else ''}{step['command']}` |")  # fmt: skip
        for step in self.steps:
            if step["name"] == "step_overhead" or step["name"].startswith(("efficiency", "io_binding")):
                text = Path(step["log"]).read_text()
                tables = "\n".join(line for line in text.splitlines() if line.startswith("|") or "Hardware" in line)
                lines += ["", f"## {step['name']}", "", tables or "(no table: see the log)"]
        (self.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
        (self.out / "gpu_check.json").write_text(json.dumps(self.steps, indent=2))
        return all(step["ok"] for step in self.steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny schedules and network: checks that it runs")
    parser.add_argument("--out", type=Path, default=Path("gpu_check_results"), help="default: %(default)s")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: --device cuda, but PyTorch sees no GPU here; on a CPU run --device cpu --quick", file=sys.stderr
        )
        return 2
    if args.out.exists() and any(args.out.iterdir()):
        print(f"gpu_check: {args.out} is not empty: pass another --out", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    check = Check(args.device, args.quick, args.out)
    check.step_overhead()
    check.dataset()
    check.training()
    check.efficiency()
    check.io_binding()
    ok = check.report(started)
    print(f"[gpu_check] {'all steps passed' if ok else 'some steps FAILED'}; report: {args.out / 'gpu_check.md'}")
    print((args.out / "gpu_check.md").read_text())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
