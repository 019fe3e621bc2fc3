"""KiTS phantom benchmark, as a script: the same as ``nnunet_hlfd benchmark`` (see nnunet_hlfd/cli/benchmark.py).

python benchmarks/kits_benchmark.py ../shared/data/kits19 --profile cpu --work benchmarks/work/cpu
"""

import sys

from nnunet_hlfd.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
