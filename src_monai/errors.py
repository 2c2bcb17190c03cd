"""Exceptions and warnings of napari-lasc.

Every error a user can cause derives from :class:`LascError`. Its message is one line that
names the file (or config key) and the problem, so the CLI can print ``error: <message>``
and napari can show it as a notification without a traceback.
"""

from __future__ import annotations

from os import PathLike


class LascError(Exception):
    """Base class of the errors caused by input: files, folders, config values."""

    def __init__(self, source: str | PathLike[str] | None, problem: str) -> None:
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(problem if source is None else f"{self.source}: {problem}")


class ScanReadError(LascError):
    """A scan or label file cannot be read as a volume."""


class NotAScanError(ScanReadError):
    """The file is not in a supported format, or its header cannot be parsed."""


class TruncatedScanError(ScanReadError):
    """The header is readable but the file holds fewer voxel bytes than it declares."""


class CorruptScanError(ScanReadError):
    """The compressed stream is damaged (bad CRC, bad deflate data)."""


class ScanShapeError(ScanReadError):
    """The volume is not a single 3D scalar volume (2D, 4D with several volumes, RGB)."""


class NonFiniteVoxelsError(ScanReadError):
    """The volume holds NaN or infinite voxels."""


class BadAffineError(ScanReadError):
    """The voxel-to-world transform is zero, singular or not finite."""


class LabelValueError(ScanReadError):
    """A label volume holds non-integer values or values outside the declared classes."""


class PairMismatchError(LascError):
    """An image and its label do not share shape or geometry."""


class DatasetError(LascError):
    """A dataset folder is missing, empty, or inconsistent."""


class MaskColourError(LascError):
    """An RGB mask holds colours that are neither map colours nor blends of them."""


class OutputExistsError(LascError):
    """An output would overwrite existing files and ``overwrite`` was not asked for."""


class TrainingDivergedError(LascError):
    """The training loss became NaN or infinite: the run stops, its checkpoints are kept."""


class GeometryWarning(UserWarning):
    """A scan's geometry was read, but its header disagrees with itself or is unusual; the
    message says what was used."""


class OrientationUnknownWarning(GeometryWarning):
    """The NIfTI header has neither a qform nor an sform: orientation is a guess."""
