#!/usr/bin/env bash
# The prepared GPU check (issue 18): one command, about 8 minutes on one H100/H200.
#
#   bash benchmarks/gpu_check.sh                      # on the GPU machine: results in $OUT (or ./gpu_check_results)
#   bash benchmarks/gpu_check.sh --device cpu --quick # here and in CI: the same steps on tiny schedules
#
# What it records (nnunet_hlfd/benchmark/gpu_check.py): the step-overhead benchmark on nnU-Net's default 2D/3D plans
# under AMP; an HLFD training on 3d_fullres through nnUNetv2_train -device (stopped after epoch 1, resumed with --c)
# and nnUNetv2_predict; nnUNet_compile=t with a hooked w0.25 student; the efficiency table of teacher, w0.5 and
# w0.25 with PyTorch and ONNX Runtime; ONNX Runtime's IO binding and a float16 bundle of the w0.5 student (on the GPU
# where the installed onnxruntime has the CUDA provider). Exit code 0 only if every step did what it should.
#
# The GPU machine lacks nnU-Net and this package's dependencies (../shared/docs/gpu-device.md): carry their wheels
# in a folder and name it with HLFD_WHEELS=folder; they are installed with --no-deps (never touching its torch).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${HLFD_WHEELS:-}" ]] && ! python3 -c "import nnunetv2" 2>/dev/null; then
    python3 -m pip install --no-deps --no-index -q "$HLFD_WHEELS"/*.whl
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the package from this working tree, installed or not

args=("$@")
if [[ ! " ${args[*]-} " =~ " --out " ]]; then
    args+=(--out "${OUT:-gpu_check_results}/gpu_check")
fi
exec python3 -m nnunet_hlfd.benchmark.gpu_check "${args[@]}"
