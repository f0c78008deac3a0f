"""The precision and runtime choices a user can name, in one place.

Free of torch and of every runtime, so option parsers and dialogs can list the choices
without loading the network's dependencies.
"""

from __future__ import annotations

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
"""Values of the ``precision`` option; ``auto`` picks the fastest one that passes the
accuracy probe (:class:`backend.inference.SuperResolver`)."""
RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")
"""Values of the ``runtime`` option: the CPU inference runtime, or torch (the reference)."""
