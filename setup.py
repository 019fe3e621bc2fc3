from setuptools import find_packages, setup

setup(
    name="nnunet-hlfd",
    version="0.1.0",
    description="Hierarchical Layer-selective Feedback Distillation (HLFD) for nnU-Net v2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["nnunet_hlfd", "nnunet_hlfd.*"]),
    install_requires=[
        "nnunetv2>=2.8.1,<2.9",
        "torch>=2.1.2,!=2.9.*",
        "batchgenerators>=0.25",
        "SimpleITK>=2.2",
        "numpy>=1.24",
        "acvl-utils>=0.2.6,<0.3",
        "matplotlib>=3.6",
        "scipy>=1.10",
        "monai>=1.4,<1.7",  # surface distances for HD95, ASSD and NSD (evaluation)
        # deploy bundles: the ONNX export (torch.export-based, needs onnxscript) and prediction on ONNX Runtime
        "onnx>=1.16,<2",
        "onnxscript>=0.5,<1",
        "onnxruntime>=1.18,<2",
    ],
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3.5,<4", "ruff>=0.5", "surface-distance>=0.1,<0.2"]},
    entry_points={"console_scripts": ["nnunet_hlfd=nnunet_hlfd.cli:main"]},
)
