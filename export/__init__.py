"""edgeseg export: checkpoint -> ONNX bundles (one file per component, manifest), verify, eval, bench."""
