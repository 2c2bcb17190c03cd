"""How fast ``lasc`` answers before any work: its help, and a missing input, against the time
``python -c "import torch"`` takes on the same machine, in one interleaved run.

    .venv/bin/python benchmarks/cli_startup.py [--repeats 5]

Prints a table of medians and writes ``benchmarks/results/cli_startup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_facts  # this folder

REPO = Path(__file__).resolve().parents[1]
LASC = str(Path(sys.executable).with_name("lasc"))


def commands(folder: Path) -> dict[str, list[str]]:
    missing = folder / "nothing.nii.gz"
    return {
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "lasc --help": [LASC, "--help"],
        "lasc infer MISSING --out OUT": [LASC, "infer", str(missing), "--out", str(folder / "o")],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/cli_startup.json")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        runs = commands(Path(folder))
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, command in runs.items():
                started = time.perf_counter()
                subprocess.run(command, capture_output=True)
                times[name].append(time.perf_counter() - started)
        created = (Path(folder) / "o").exists()
    medians = {name: statistics.median(values) for name, values in times.items()}
    torch_s = medians['python -c "import torch"']
    results = {
        **machine_facts(load),
        "repeats": args.repeats,
        "seconds": times,
        "median_seconds": medians,
        "share_of_import_torch": {name: m / torch_s for name, m in medians.items()},
        "missing_input_created_out": created,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{args.repeats} interleaved rounds, load {load:.2f} at the start")
    print("| command | median s (min-max) | share of import torch |")
    print("|---|---|---|")
    for name, values in times.items():
        print(
            f"| {name} | {medians[name]:.2f} ({min(values):.2f}-{max(values):.2f}) | "
            f"{medians[name] / torch_s:.2f} |"
        )
    print(f"the missing input left an output folder: {created}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
