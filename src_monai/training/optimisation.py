"""What changes a network's weights during training: the optimiser, its schedule, the loss,
the precision, the weight average and gradient clipping; and the starting weights of a
fine-tune. The trainer holds one :class:`Optimisation` and calls :meth:`~Optimisation.step`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from src_monai.config import Config, ConfigError
from src_monai.model.networks import build_network, plain_state_dict, unwrap
from src_monai.model.spec import Stage
from src_monai.training.components import build_loss, build_optimiser, build_scheduler

logger = logging.getLogger(__name__)


class Optimisation:
    """The network of a run and its optimiser, schedule, loss, precision and average."""

    def __init__(self, config: Config, device: torch.device) -> None:
        torch.manual_seed(config.train.seed)
        self.config, self.device = config, device
        self.network: torch.nn.Module = build_network(
            config.model,
            config.data.context_slices,
            config.data.num_classes,
            config.data.stage.spatial_dims,
        ).to(device)
        self.optimiser = build_optimiser(config, self.network.parameters())
        self.scheduler = build_scheduler(config, self.optimiser)
        self.loss_function = build_loss(config.train.loss, config.data.num_classes)
        self.averaged = _moving_average(self.network, config.train.ema_decay)
        self.precision = _precision(config.train.precision, device)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

    def model_to_use(self) -> torch.nn.Module:
        """The weights validated and saved: the moving average when there is one."""
        return self.averaged.module if self.averaged is not None else unwrap(self.network)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The batch's loss, its gradients computed (not yet applied)."""
        self.optimiser.zero_grad(set_to_none=True)
        with torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        ):
            loss = self.loss_function(self.network(images), labels)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimiser)
        else:
            loss.backward()
        return loss

    def apply(self) -> None:
        """Clip the gradients, step the optimiser, update the weight average."""
        clip_gradients(self.network, self.config)
        if self.scaler is not None:
            self.scaler.step(self.optimiser)
            self.scaler.update()
        else:
            self.optimiser.step()
        if self.averaged is not None:
            self.averaged.update_parameters(unwrap(self.network))

    def step_scheduler(self, mean_dice: float | None) -> None:
        """After an epoch: a plateau schedule steps on a validation, the others every epoch."""
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if mean_dice is not None:
                self.scheduler.step(mean_dice)
        else:
            self.scheduler.step()

    @property
    def learning_rate(self) -> float:
        return self.optimiser.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": plain_state_dict(self.network),
            "averaged": None if self.averaged is None else self.averaged.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap(self.network).load_state_dict(state["model"])
        if self.averaged is not None and state.get("averaged"):
            self.averaged.load_state_dict(state["averaged"])
        self.optimiser.load_state_dict(state["optimiser"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])


def _moving_average(network: torch.nn.Module, decay: float):
    """A moving average of the network's weights (``train.ema_decay``), or None. Its first
    update copies the weights (torch's rule), so loaded initial weights are not mixed with
    the random ones it was made from."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(unwrap(network), multi_avg_fn=get_ema_multi_avg_fn(decay))


def _precision(asked: str, device: torch.device) -> str:
    """``auto``: bf16 on CUDA, fp32 on the CPU (a recipe's arithmetic does not change with
    the CPU it lands on). ``bf16`` also runs on the CPU, where autocast computes convolutions
    in bfloat16: on CPUs with AVX512-BF16 a 3D UNet's step takes about half the time. fp16
    needs CUDA (its loss scaling is CUDA's)."""
    precision = ("bf16" if device.type == "cuda" else "fp32") if asked == "auto" else asked
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(None, "train.precision = 'fp16' needs a CUDA device (bf16 runs on CPUs)")
    return precision


def load_initial_weights(network: torch.nn.Module, config: Config) -> None:
    """Start from a trained model's weights (fine-tuning); its architecture must match. Of
    a two-stage model file, the stage this config trains (a localiser's or a crop model's)."""
    from src_monai.model.files import load_stage, model_path

    source = config.train.init_model
    path = model_path(source)
    stage = "localiser" if config.data.stage is Stage.LOCALISER else "segmenter"
    trained, spec = load_stage(path, stage)
    if (
        spec.in_channels != config.data.context_slices
        or spec.num_classes != config.data.num_classes
    ):
        raise ConfigError(
            path,
            f"train.init_model has {spec.in_channels} input channels and "
            f"{spec.num_classes} classes; the config asks for "
            f"{config.data.context_slices} and {config.data.num_classes}",
        )
    try:
        network.load_state_dict(trained.state_dict(), strict=True)
    except RuntimeError as exc:
        raise ConfigError(
            path,
            "train.init_model's architecture differs from [model] in the config "
            f"({str(exc).splitlines()[0]})",
        ) from exc
    logger.info("initial weights from %s", path)


def clip_gradients(network: torch.nn.Module, config: Config) -> None:
    if config.train.clip_value > 0:
        torch.nn.utils.clip_grad_value_(network.parameters(), config.train.clip_value)
    if config.train.clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(network.parameters(), config.train.clip_norm)
