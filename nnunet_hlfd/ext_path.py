"""Print the folder to put in nnUNet_extTrainer: ``export nnUNet_extTrainer=$(python -m nnunet_hlfd.ext_path)``.

It holds a single shim module; never point nnUNet_extTrainer at this package or at site-packages (nnU-Net
imports every module of that folder as a top-level module and removes them again afterwards).
"""

from pathlib import Path

EXT_TRAINER_DIR = str(Path(__file__).resolve().parent / "_ext")


def main() -> None:
    print(EXT_TRAINER_DIR)


if __name__ == "__main__":
    main()
