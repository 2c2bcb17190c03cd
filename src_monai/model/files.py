"""The model file: a network's weights and its :class:`~src_monai.model.spec.ModelSpec`.

A model file is a ``.safetensors`` file: the weights, plus JSON metadata in its header (the
architecture config, normalisation, classes, slice axis, spacing, data and split used,
validation metrics, package version). Loading it runs no code from the file. A plain state
dict saved with ``torch.save`` is accepted too when a ``.json`` file with the metadata stands
beside it; it is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from src_monai import __version__
from src_monai.errors import LascError
from src_monai.io.files import atomic_destination, current_umask
from src_monai.model.networks import build_network, plain_state_dict
from src_monai.model.spec import ModelSpec, Stage

logger = logging.getLogger(__name__)


MODEL_FORMAT = "napari-lasc-model"
MODEL_FORMAT_VERSION = 1
METADATA_KEY = "napari_lasc"

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
BUNDLED_MODEL = RESOURCES / "left_atrium.safetensors"
SAMPLE_SCAN = RESOURCES / "sample_la_016.nii.gz"
SAMPLE_LABEL = RESOURCES / "sample_la_016_label.nii.gz"


class ModelFileError(LascError):
    """A model file is missing, damaged, unsafe, or disagrees with its metadata."""


def save_model(
    path: str | Path,
    network: nn.Module,
    spec: ModelSpec,
    *,
    overwrite: bool = True,
    half: bool = False,
) -> Path:
    """Write weights and metadata as one ``.safetensors`` file, atomically.

    ``half`` stores floating-point weights as fp16 (half the size; loading casts them back).
    """
    from safetensors.torch import save_file

    metadata = {
        **spec.to_metadata(),
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "package_version": __version__,
    }
    state = plain_state_dict(network)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    with atomic_destination(path, overwrite=overwrite) as temporary:
        save_file(state, str(temporary), metadata={METADATA_KEY: json.dumps(metadata)})
        # safetensors makes its files owner-only (0600) whatever the umask: a model on a
        # shared server should be readable as the user's other files are
        os.chmod(temporary, 0o666 & ~current_umask())
    return Path(path)


class TwoStageNetwork(nn.Module):
    """Both networks of a two-stage model, saved in one file (``localiser.*`` and
    ``segmenter.*`` weights)."""

    def __init__(self, localiser: nn.Module, segmenter: nn.Module) -> None:
        super().__init__()
        self.localiser = localiser
        self.segmenter = segmenter


def build_model_network(spec: ModelSpec) -> nn.Module:
    """The network (or, for a two-stage spec, both networks) a spec describes."""
    network = build_network(
        spec.network, spec.in_channels, spec.num_classes, spec.input.spatial_dims
    )
    if spec.localiser is None:
        return network
    stage_one = spec.localiser
    localiser = build_network(stage_one.network, stage_one.in_channels, stage_one.num_classes)
    return TwoStageNetwork(localiser, network)


def load_stage(path: str | Path, stage: str) -> tuple[nn.Module, ModelSpec]:
    """One stage's network and spec (``localiser`` or ``segmenter``) from a two-stage model
    file; a one-stage file is returned whole (the caller checks that it fits)."""
    network, spec = load_model(path)
    if spec.localiser is None:
        return network, spec
    if stage == "localiser":
        return network.localiser, spec.localiser
    return network.segmenter, replace(spec, localiser=None)


def combine_stages(
    localiser_path: str | Path, segmenter_path: str | Path, out: str | Path, *, half: bool = False
) -> Path:
    """One two-stage model file from a localiser's (stage 1) and a crop model's (stage 2);
    either may be a two-stage file, whose stage of that name is taken."""
    localiser, localiser_spec = load_stage(localiser_path, "localiser")
    segmenter, segmenter_spec = load_stage(segmenter_path, "segmenter")
    if localiser_spec.stage is not Stage.LOCALISER:
        raise ModelFileError(
            localiser_path, f"is not a localiser (its stage: {localiser_spec.stage.value})"
        )
    if not segmenter_spec.stage.in_box:
        raise ModelFileError(
            segmenter_path, f"is not a crop segmenter (its stage: {segmenter_spec.stage.value})"
        )
    if (localiser_spec.normalisation, localiser_spec.slice_axis) != (
        segmenter_spec.normalisation,
        segmenter_spec.slice_axis,
    ):
        raise ModelFileError(localiser_path, "normalisation or slice axis differs from stage 2's")
    spec = replace(segmenter_spec, localiser=localiser_spec)
    return save_model(out, TwoStageNetwork(localiser, segmenter), spec, half=half)


def model_path(value: str | Path | None) -> Path:
    """A model file named on a command line or in a config: ``bundled`` (or nothing) is the
    model shipped with the package."""
    return BUNDLED_MODEL if value is None or str(value) == "bundled" else Path(value)


def load_spec(path: str | Path) -> ModelSpec:
    """A model file's spec from its header alone: no weights read, no network built (what
    a GUI may read on its own thread)."""
    path = model_path(path)
    if path.suffix != ".safetensors":
        return load_model(path)[1]
    return _spec(path, _read_safetensors(path, weights=False)[1])


def _spec(path: Path, metadata: dict[str, Any]) -> ModelSpec:
    if metadata.get("format") != MODEL_FORMAT:
        raise ModelFileError(path, "metadata is not a napari-lasc model description")
    try:
        return ModelSpec.from_metadata(metadata)
    except (KeyError, TypeError, ValueError, LascError) as exc:
        raise ModelFileError(path, f"metadata does not describe a network ({exc})") from exc


def _finite(value: torch.Tensor) -> bool:
    """No NaN or infinity in a weight tensor. NumPy's check: ``torch.isfinite`` took 0.5 s
    over a 5 M-weight 3D model on this CPU, a tenth of a scan's prediction; NumPy's 3 ms."""
    return bool(np.isfinite(value.detach().to("cpu", torch.float32).numpy()).all())


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelSpec]:
    """Rebuild the network a model file describes and load its weights (no code is run);
    ``bundled`` loads the shipped model."""
    path = model_path(path)
    if not path.is_file():
        raise ModelFileError(path, "model file not found")
    kind = "safetensors" if path.suffix == ".safetensors" else _content_kind(path)
    if kind == "safetensors":
        state, metadata = _read_safetensors(path)  # a renamed model file still loads
    else:
        state, metadata = _read_state_dict(path, kind)
    spec = _spec(path, metadata)
    try:
        network = build_model_network(spec)
    except (KeyError, TypeError, ValueError, LascError) as exc:
        raise ModelFileError(path, f"metadata does not describe a network ({exc})") from exc
    broken = next((name for name, value in state.items() if not _finite(value)), None)
    if broken is not None:
        raise ModelFileError(path, f"weights {broken} hold NaN or infinite values: a broken model")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelFileError(
            path, f"weights do not match the architecture in its metadata ({first})"
        ) from exc
    network.to(device).eval()
    return network, spec


def _read_safetensors(
    path: Path, *, weights: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    if not path.is_file():
        raise ModelFileError(path, "model file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        state = load_file(str(path)) if weights else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(path, f"not a readable safetensors file ({exc})") from exc
    try:
        return state, json.loads(header[METADATA_KEY])
    except (KeyError, ValueError) as exc:
        raise ModelFileError(path, "no napari-lasc metadata in the file") from exc


def _content_kind(path: Path) -> str:
    """What the first bytes of ``path`` say it is: ``safetensors``, ``torch`` (a zip archive
    or a pickle, as ``torch.save`` writes), or a description of anything else for a message."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    size = path.stat().st_size
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # zip, or pickle protocol 2+
        return "torch"
    if not head:
        return "an empty file"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed data (a .nii.gz scan?)"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (a Keras .h5 model? convert it: it cannot be read here)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return f"a binary file that starts {head[:8].hex(' ')}"
    return "a text file"


def _read_state_dict(path: Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A ``torch.save`` state dict and its ``.json`` sidecar; ``kind``: the file's
    :func:`_content_kind`."""
    sidecar = path.with_suffix(".json")
    if kind != "torch":
        raise ModelFileError(path, f"not a model file: {kind}, not safetensors or PyTorch weights")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses pickles that would run code
        if "Weights only load failed" in str(exc):
            problem = (
                "refused: it holds pickled Python objects, not only tensors, and loading "
                "it could run code"
            )
        else:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            problem = f"refused: not a plain weights file ({first[:160]})"
        raise ModelFileError(path, problem) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(path, "not a state dict of tensors")
    try:
        metadata = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(sidecar, f"model metadata missing or unreadable ({exc})") from exc
    return state, metadata
