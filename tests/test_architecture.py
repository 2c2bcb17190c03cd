"""The house rules that keep the code readable: stages as sub-packages, short functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LONGEST_FUNCTION = 60  # lines, decorators included; split longer ones into named steps
LONGEST_CLASS = 300  # lines: a longer one holds more than one job

# The pipeline in order, one sub-package a stage (README, Architecture).
STAGES = ("io", "data", "model", "training", "inference", "evaluation", "legacy", "cli")


def _definitions(package: str, kinds=(ast.FunctionDef, ast.AsyncFunctionDef)):
    for path in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, kinds):
                first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                yield path.relative_to(REPO), node.name, node.end_lineno - first + 1


def test_no_function_is_longer_than_the_limit():
    too_long = [
        f"{path}: {name} ({lines} lines)"
        for package in ("src_monai", "napari_lasc")
        for path, name, lines in _definitions(package)
        if lines > LONGEST_FUNCTION
    ]
    assert not too_long, "split into named steps: " + "; ".join(too_long)


def test_no_class_is_longer_than_the_limit():
    too_long = [
        f"{path}: {name} ({lines} lines)"
        for package in ("src_monai", "napari_lasc")
        for path, name, lines in _definitions(package, ast.ClassDef)
        if lines > LONGEST_CLASS
    ]
    assert not too_long, "give its jobs their own classes: " + "; ".join(too_long)


def test_the_core_is_one_sub_package_per_stage():
    core = REPO / "src_monai"
    packages = sorted(p.name for p in core.iterdir() if (p / "__init__.py").is_file())
    assert packages == sorted(STAGES)
    loose = sorted(p.name for p in core.glob("*.py"))
    assert loose == ["__init__.py", "config.py", "errors.py", "progress.py"]


def test_the_core_never_imports_the_plugin():
    for path in sorted((REPO / "src_monai").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                assert top not in {"napari_lasc", "napari", "magicgui", "qtpy"}, f"{path}: {name}"


@pytest.mark.slow
def test_lasc_infer_labels_equal_the_recorded_reference(lasc13):
    """The labels `lasc infer` gives real scans stay voxel-identical through refactors
    (the reference was recorded before the core was restructured; a new bundled model is a
    deliberate change and needs a new reference, which the script says)."""
    import subprocess
    import sys

    script = REPO / "scripts" / "check_labels_unchanged.py"
    cases = ["la_003.nii.gz", "la_016.nii.gz"]
    result = subprocess.run(
        [sys.executable, str(script), str(lasc13 / "imagesTr"), "--cases", *cases],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 of 2 cases identical" in result.stderr


def _module_imports() -> dict[str, set[str]]:
    """Each module of the two packages and the modules of them it imports, imports inside
    functions included."""
    modules = {}
    for package in ("src_monai", "napari_lasc"):
        for path in sorted((REPO / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([base] if base else [])])
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def test_no_import_cycle_between_modules():
    graph = _module_imports()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            current = todo.pop()
            if current == goal:
                return True
            if current not in seen:
                seen.add(current)
                todo.extend(graph[current])
        return False

    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if reaches(b, a))
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_the_core_never_imports_the_earlier_tools_package():
    """``legacy`` depends on the core, never the reverse (the CLI chooses the legacy paths)."""
    graph = _module_imports()
    reaching = sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name.startswith("src_monai.")
        and not name.startswith(("src_monai.legacy", "src_monai.cli"))
        for target in targets
        if target.startswith("src_monai.legacy")
    )
    assert not reaching, "; ".join(reaching)


def test_the_bundles_pipeline_needs_monai_torch_nibabel_numpy_and_scipy_alone():
    """``bundle_pipeline.py`` is copied into exported MONAI bundles, which run without
    napari-lasc installed."""
    path = REPO / "src_monai" / "model" / "bundle_pipeline.py"
    standard = {"__future__", "functools", "pathlib", "typing"}
    allowed = standard | {"monai", "torch", "nibabel", "numpy", "scipy"}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import in {path.name}"
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
    # Its own copy of what it shares with the core, kept equal.
    from src_monai.inference.options import PRECISIONS
    from src_monai.model import bundle_pipeline

    assert bundle_pipeline.PRECISIONS == PRECISIONS
