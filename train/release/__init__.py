"""Release (export in Vocos's layout and ONNX, model card, listening page, publishing): empty until it lands."""
