"""torch -> ONNX -> TensorRT export and the engine cache."""
