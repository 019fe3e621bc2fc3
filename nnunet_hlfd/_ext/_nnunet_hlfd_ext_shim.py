# The only module in the folder that nnUNet_extTrainer points at. nnU-Net imports every module there as a
# top-level module; re-exporting keeps the real classes (nnunet_hlfd.trainers.*) importable and picklable.
from nnunet_hlfd.trainers import *  # noqa: F401,F403
from nnunet_hlfd.trainers import __all__  # noqa: F401
