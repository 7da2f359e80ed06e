"""Shipping a model to a device: the artifact file, the numpy-only runtime, ONNX export.

* :mod:`pocketrec.device.artifact` writes one ``.safetensors`` file per device (needs torch);
* :mod:`pocketrec.device.runtime` loads it and recommends with numpy only (``load(path).recommend(...)``);
* :mod:`pocketrec.device.onnx_export` writes the same model as one ONNX graph (needs torch);
* the stored layouts they share with the tables (bit-packing, ...) are in :mod:`pocketrec.formats`.

This package imports nothing heavy itself, so ``import pocketrec.device.runtime`` stays torch-free.
"""
