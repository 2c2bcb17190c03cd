"""The loss, optimiser and learning-rate schedule a config names (MONAI's losses, torch's
optimisers).
"""

from __future__ import annotations

import logging

import torch

from src_monai.config import Config

logger = logging.getLogger(__name__)


def build_loss(name: str, num_classes: int):
    from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss

    if name == "ce":
        return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.0, lambda_ce=1.0)
    if name == "dice":
        return DiceLoss(to_onehot_y=True, softmax=True, include_background=False)
    if name == "dice_ce":
        return DiceCELoss(to_onehot_y=True, softmax=True)
    if name == "dice_focal":
        return DiceFocalLoss(to_onehot_y=True, softmax=True)
    raise ValueError(f"unknown loss {name!r}")


def build_optimiser(config: Config, parameters):
    train = config.train
    if train.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=train.learning_rate, weight_decay=train.weight_decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(
            parameters, lr=train.learning_rate, weight_decay=train.weight_decay
        )
    return torch.optim.SGD(
        parameters,
        lr=train.learning_rate,
        momentum=train.momentum,
        nesterov=True,
        weight_decay=train.weight_decay,
    )


def build_scheduler(config: Config, optimiser):
    train = config.train
    if train.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimiser, mode="max", factor=train.reducer_factor, patience=train.reducer_patience
        )
    if train.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=train.epochs)
    if train.scheduler == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(optimiser, total_iters=train.epochs, power=0.9)
    return None
