"""Step-overhead benchmark, as a script: the same as ``python -m nnunet_hlfd.benchmark.step_overhead``.

python benchmarks/step_overhead.py                 # CPU, small plans
python benchmarks/step_overhead.py --device cuda   # GPU, nnU-Net's default-sized plans
"""

from nnunet_hlfd.benchmark.step_overhead import main

if __name__ == "__main__":
    main()
