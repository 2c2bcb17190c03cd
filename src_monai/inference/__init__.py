"""Inference: the predictor, post-processing, measurements and QC (the case report), the
interactive session the napari widget uses, and ``lasc infer``'s file loop."""
