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


def scrolling_body(outer: Container, widgets: list[Any]) -> Container:
    """``widgets`` in a scrollable container, the only child of ``outer``'s layout.

    napari docks a magicgui widget's ``native`` (the widget holding its layout, not the
    scroll area magicgui's ``scrollable`` puts around it), so the scroll area goes inside:
    a dock shorter than its controls scrolls, and three docks stacked on napari's right
    still fit a 1280x800 screen."""
    body = Container(widgets=widgets, scrollable=True)
    layout = outer.native.layout()
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(body.root_native_widget)
    return body
