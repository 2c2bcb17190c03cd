"""The baseline process of ``infer_speed.py``: plain MONAI, as a MONAI user would write it.

    python benchmarks/monai_baseline.py MODEL.safetensors OUT_DIR SCAN.nii.gz [SCAN ...]

MONAI's tutorial 2D UNet (16-32-64-128-256, 2 residual units, instance norm) with the weights
of a single-stage napari-lasc model file (3 context slices in, 2 classes out), run over each
scan with ``SliceInferer`` on whole slices, ``AsDiscrete(argmax=True)``, and written with
``SaveImage``. Reading (``LoadImage``) and normalisation (percentile clip, z-score) are MONAI's
transforms too. Nothing of napari-lasc is imported: this is the comparison a user would make.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from monai.inferers import SliceInferer
from monai.networks.nets import UNet
from monai.transforms import (
    AsDiscrete,
    LoadImage,
    NormalizeIntensity,
    SaveImage,
    ScaleIntensityRangePercentiles,
)
from safetensors.torch import load_file


def main(model: str, out: str, scans: list[str]) -> None:
    network = UNet(
        spatial_dims=2,
        in_channels=3,
        out_channels=2,
        channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2),
        num_res_units=2,
        norm="instance",
    )
    network.load_state_dict({k: v.float() for k, v in load_file(model).items()})
    network.eval()
    load = LoadImage(image_only=True, ensure_channel_first=True)
    scale = ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
    normalise = NormalizeIntensity()
    save = SaveImage(
        output_dir=out,
        output_postfix="",
        output_dtype=np.uint8,
        separate_folder=False,
        print_log=False,
    )
    for path in scans:
        image = load(path)  # (1, X, Y, Z), meta data kept for SaveImage
        values = normalise(scale(image.float()))
        depth = values.shape[-1]
        # 2.5D: channel c holds slice k + c - 1 (edge slices repeated), slices along Z.
        index = torch.from_numpy(
            np.clip(np.arange(depth)[None, :] + np.arange(-1, 2)[:, None], 0, depth - 1)
        )
        stacked = values[0][:, :, index].permute(2, 0, 1, 3)[None]  # (1, 3, X, Y, Z)
        inferer = SliceInferer(
            roi_size=tuple(values.shape[1:3]), sw_batch_size=1, spatial_dim=2, progress=False
        )
        with torch.inference_mode():
            logits = inferer(stacked.as_tensor(), network)
        labels = AsDiscrete(argmax=True)(logits[0]).to(torch.uint8)
        labels = type(image)(labels, meta=image.meta)  # the scan's geometry for SaveImage
        save(labels)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
