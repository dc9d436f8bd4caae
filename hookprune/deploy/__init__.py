"""Deploying a compressed model: ONNX export (QDQ for quantized models), a real int8 PyTorch model from
post-training quantization, and 2:4 semi-structured sparse weights for sparse tensor cores."""
