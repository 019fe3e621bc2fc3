"""3D at full size on the CPU, as a script: the same as ``python -m nnunet_hlfd.benchmark.efficiency_3d``.

python benchmarks/efficiency_3d.py --work /tmp/efficiency_3d           # 1 case, nnU-Net's default and 3 faster settings
python benchmarks/efficiency_3d.py --work /tmp/efficiency_3d --grid    # every backend × TTA × step combination
"""

from nnunet_hlfd.benchmark.efficiency_3d import main

if __name__ == "__main__":
    raise SystemExit(main())
