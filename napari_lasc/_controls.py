"""Small pieces the widgets' control lists share."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Container, Label, PushButton


def button_row(*buttons: PushButton) -> Container:
    """Buttons side by side, without labels (Segment | Cancel, Train | Stop...)."""
    return Container(widgets=list(buttons), layout="horizontal", labels=False)


def result_label(label: str) -> Label:
    """A read-only text that wraps: a long result grows down the dock instead of being cut
    at its right edge (a QLabel does not wrap unless told)."""
    text = Label(label=label, value="")
    text.native.setWordWrap(True)
    return text


class ScrollingContainer(Container):
    """A widget whose controls sit in a scrollable container (``body``) inside it.

    napari docks a magicgui widget's ``native`` (the widget holding its layout, not the
    scroll area magicgui's ``scrollable`` puts around it), so the scroll area goes inside:
    a dock shorter than its controls scrolls, and three docks stacked on napari's right
    still fit a 1280x800 screen. The body is a Qt child only, so the layer pickers' choices
    (which napari refreshes through the docked widget) are passed on to it."""

    def __init__(self, widgets: list[Any]) -> None:
        super().__init__(widgets=[])
        self.body = Container(widgets=widgets, scrollable=True)
        layout = self.native.layout()
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.body.root_native_widget)

    def reset_choices(self, *args: Any) -> None:
        super().reset_choices(*args)
        self.body.reset_choices(*args)
