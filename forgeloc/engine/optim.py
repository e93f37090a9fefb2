"""Optimiser construction and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from forgeloc.engine.config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters into decayed and non-decayed groups, honouring per-parameter lr scales.

    As timm's ``create_optimizer`` (used by the papers' training scripts): biases, norm weights and
    every other tensor with fewer than 2 dimensions, plus names returned by the model's
    ``no_weight_decay()``, get no weight decay. A model may define ``lr_scale(name) -> float`` to
    give some parameters a different learning rate (e.g. DeepLab's 10x head rate); the factor is
    stored as ``lr_scale`` in the group and applied by :func:`set_learning_rate`.
    """
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    lr_scale = getattr(model, "lr_scale", None)
    groups: dict[tuple[bool, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(".bias") or name in skip
        scale = float(lr_scale(name)) if callable(lr_scale) else 1.0
        key = (no_decay, scale)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale}
        groups[key]["params"].append(param)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay)
    # foreach: the multi-tensor update; PyTorch only picks it by default on CUDA, yet it is
    # also much faster on the CPU for models with many small tensors.
    if cfg.name == "adamw":
        return torch.optim.AdamW(
            groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=True
        )
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay,
        foreach=True,
    )


def learning_rate(cfg: OptimConfig, epoch_progress: float, total_epochs: int) -> float:
    """Learning rate at a fractional epoch ``t`` (IMDLBenCo's schedule, protocol (e)).

    ``t < warmup``: ``lr · t / warmup``; then cosine: ``min_lr + (lr − min_lr)·½(1 + cos(π·p))`` with
    ``p = (t − warmup)/(epochs − warmup)``; poly: ``min_lr + (lr − min_lr)·(1 − p)^power``.
    """
    t = epoch_progress
    if cfg.warmup_epochs > 0 and t < cfg.warmup_epochs:
        return cfg.lr * t / cfg.warmup_epochs
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(total_epochs - cfg.warmup_epochs, 1e-12)
    p = min(max((t - cfg.warmup_epochs) / span, 0.0), 1.0)
    if cfg.schedule == "cosine":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1.0 - p) ** cfg.poly_power


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
