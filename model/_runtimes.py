"""What can run the network, and whether ONNX Runtime is installed: torch-free, so that settings
can check it before torch loads."""
from __future__ import annotations

import importlib.util

#: "torch": the network in torch (a TorchScript graph when it traces); "onnx": exported to ONNX and
#: run in onnxruntime on the CPU (the `onnx` extra)
RUNTIMES = ("torch", "onnx")
_ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def missing_onnx_packages() -> list[str]:
    """The packages of the `onnx` extra (export and onnxruntime) not installed here; empty when all are."""
    return [name for name in _ONNX_PACKAGES if importlib.util.find_spec(name) is None]
