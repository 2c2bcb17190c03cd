"""Training: the :class:`~src_monai.training.trainer.Trainer` and its run folder, losses and
optimisers, several processes with ``torchrun``."""
