"""The earlier Keras tool (TensorFlow-FlexUNet for Left-Atrial), in one place: its INI config,
its PNG slice datasets with RGB masks (``rgb_map``), and their export."""
