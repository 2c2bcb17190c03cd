"""The models the widgets offer: the bundled one, those trained in this session, a file.

The Train widget adds each model it trains here; the Segment widget lists them, so a model
trained inside napari is selectable at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from psygnal import Signal

BUNDLED = "bundled: left atrium, two-stage 3D UNet, bSSFP + LGE"  # said of the shipped file
FROM_FILE = "model file…"


class ModelRegistry:
    """Display name -> model file (``None``: the bundled model), in the order added."""

    changed = Signal()

    def __init__(self) -> None:
        self._models: dict[str, Path | None] = {BUNDLED: None}

    def add(self, name: str, path: str | Path) -> str:
        """Register a trained model; returns the display name it is listed under."""
        unique, number = name, 2
        while unique in self._models and self._models[unique] != Path(path):
            unique, number = f"{name} ({number})", number + 1
        self._models[unique] = Path(path)
        self.changed.emit()
        return unique

    def names(self) -> list[str]:
        return list(self._models)

    def path(self, name: str) -> Path | None:
        return self._models[name]


MODELS = ModelRegistry()


def follow_models(choices: Any, owner: Any) -> None:
    """Refresh the combo box ``choices`` whenever a model is added, while ``owner`` (the
    widget holding it) lives: a closed viewer's widgets must not be called back."""

    def refresh() -> None:
        choices.reset_choices()

    MODELS.changed.connect(refresh)
    owner.native.destroyed.connect(lambda *_: MODELS.changed.disconnect(refresh))
