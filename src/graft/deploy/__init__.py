"""Using a trained run where it is needed, outside graft's training stack: export (ONNX, behind a
parity gate); serving will live here too."""
