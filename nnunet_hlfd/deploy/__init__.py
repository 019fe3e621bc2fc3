"""Deploying a trained model: loading it as ``nnUNetv2_predict`` does (``trained``), exporting it into a deploy
bundle (``bundle``: ONNX network, plans, dataset.json and a weights-only checkpoint) and predicting from the bundle
with ONNX Runtime inside nnU-Net's own predictor (``onnx_predictor``)."""
