"""Model loading and the runtime interface: torch / onnxruntime / TensorRT backends."""
