"""Deployment: ONNX export of forgeloc detectors and an onnxruntime backend for ``predict``.

``forgeloc export CHECKPOINT --format onnx --out DIR`` writes ``DIR/model.onnx`` and
``DIR/config.json`` (:mod:`forgeloc.deploy.onnx`); ``forgeloc predict --backend onnxruntime DIR``
runs the exported graph through the same pre- and post-processing as the PyTorch backend.
"""
