"""Convert a challenge download into nnU-Net's raw format, without installing the console script:

    python dataset_conversion/convert.py {kits19,kits21,kits23,lits,msd,prostate-multisite} INPUT [options]

The same as ``nnunet_hlfd convert ...``. The converters themselves live in ``nnunet_hlfd/conversion/``
(one module per challenge); README.md here lists each expected layout and the labels produced.
"""

import sys

from nnunet_hlfd.cli import main

if __name__ == "__main__":
    main(["convert", *sys.argv[1:]])
