"""Feature capture: forward hooks on the stage modules of nnU-Net U-Nets (mmrazor's "recorders")."""

from nnunet_hlfd.capture.recorder import FeatureRecorder
from nnunet_hlfd.capture.unet_taps import StageLayoutError, UNetLayout, unet_layout, unet_recorder, unwrap

__all__ = ["FeatureRecorder", "StageLayoutError", "UNetLayout", "unet_layout", "unet_recorder", "unwrap"]
