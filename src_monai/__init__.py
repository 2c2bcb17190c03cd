"""GUI-free core of napari-lasc: data, transforms, model, training, evaluation, inference.

Importing this package loads neither napari nor Qt, so it runs on headless GPU servers.
"""

__version__ = "0.1.0"
