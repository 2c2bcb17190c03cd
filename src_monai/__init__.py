"""GUI-free core of napari-lasc, one sub-package a stage of the pipeline.

``io`` (scans, atomic files) -> ``data`` (datasets, splits, transforms, samples) -> ``model``
(networks, the model spec and file) -> ``training`` / ``inference`` -> ``evaluation``;
``legacy`` holds the earlier Keras tool's formats and ``cli`` the ``lasc`` command. Importing
this package loads neither napari nor Qt, so it runs on headless GPU servers.
"""

__version__ = "0.1.0"
