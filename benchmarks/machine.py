"""What every benchmark's JSON records of the machine it ran on (so figures from different days
and machines are not compared blind)."""

from __future__ import annotations

import os
import platform
import time


def machine_facts(load: float) -> dict[str, object]:
    """Date, processor, CPU count and the 1-minute load average measured at the start."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1min_at_start": load,
    }
