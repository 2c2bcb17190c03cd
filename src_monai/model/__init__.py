"""The model: MONAI networks, the typed model spec, the model file (safetensors) and its
export as a MONAI bundle."""
