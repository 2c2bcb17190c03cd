"""Small pieces the widgets' control lists share."""

from __future__ import annotations

from magicgui.widgets import Container, PushButton


def button_row(*buttons: PushButton) -> Container:
    """Buttons side by side, without labels (Segment | Cancel, Train | Stop...)."""
    return Container(widgets=list(buttons), layout="horizontal", labels=False)
