"""Deploying a compressed model: ONNX export (QDQ for quantized models), a real int8 PyTorch model from
post-training quantization, and 2:4 semi-structured sparse weights for sparse tensor cores.

The ONNX side needs the ``deploy`` extra (``pip install 'hookprune[deploy]'``: onnx, onnxscript, onnxruntime).
"""

from hookprune.deploy.errors import DeployError
from hookprune.deploy.grid import Grid, to_grid
from hookprune.deploy.int8 import convert_to_pytorch, default_engine
from hookprune.deploy.onnx_export import ExportReport, export_onnx, onnx_session, run_onnx
from hookprune.deploy.plan import LayerPlan, QuantPlan, float_copy, quant_plan
from hookprune.deploy.semi_structured import check_2to4, dense_groups, to_semi_structured, unsupported_reason

__all__ = [
    "DeployError",
    "ExportReport",
    "Grid",
    "LayerPlan",
    "QuantPlan",
    "check_2to4",
    "convert_to_pytorch",
    "default_engine",
    "dense_groups",
    "export_onnx",
    "float_copy",
    "onnx_session",
    "quant_plan",
    "run_onnx",
    "to_grid",
    "to_semi_structured",
    "unsupported_reason",
]
