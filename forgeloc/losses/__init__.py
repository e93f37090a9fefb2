"""Auxiliary losses that can be switched on for any forgeloc model.

The engine calls :func:`wrap_with_aux_loss` when a config has ``model.aux_loss``::

    model:
      name: sparsevit
      aux_loss: {name: ncl, weight: 1.0, tau: 0.1, patch_grid: null}

The wrapper runs the model, takes its ``out["features"]`` map (every forgeloc model returns one),
computes the auxiliary loss from ``batch["mask"]`` and adds it (weighted) to ``loss`` and to
``loss_terms``. Only ``ncl`` exists so far (:mod:`forgeloc.losses.contrastive`).

Checkpoints: the wrapped model's state dict is the inner model's under ``model.`` plus the auxiliary
heads under ``aux.``. The heads are training-only, so for inference keep the inner part —
:meth:`AuxLossWrapper.inner_state_dict` or :func:`strip_aux_state_dict` on a saved state dict.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from forgeloc.losses.contrastive import (
    NCLLoss,
    NCLLossConfig,
    patch_fractions,
    patch_labels,
    pivot_consistency_loss,
    supervised_contrastive_loss,
    switch_contour,
)
from forgeloc.models.base import ForgeryModel
from forgeloc.models.factory import filter_state_dict

__all__ = [
    "AuxLossWrapper",
    "NCLLoss",
    "NCLLossConfig",
    "patch_fractions",
    "patch_labels",
    "pivot_consistency_loss",
    "strip_aux_state_dict",
    "supervised_contrastive_loss",
    "switch_contour",
    "unwrap_aux_loss",
    "wrap_with_aux_loss",
]

log = logging.getLogger(__name__)

_AUX_LOSSES = ("ncl",)
# Options the wrapper itself takes; every other key goes to the loss.
_WRAPPER_OPTIONS = ("name", "weight", "in_channels", "eval_aux_loss", "lr_scale")


def strip_aux_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inner model's weights from a wrapped model's state dict (``model.*`` keys, prefix removed)."""
    inner = {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
    if not inner:
        raise ValueError("no 'model.*' keys: this is not the state dict of an AuxLossWrapper")
    return inner


class AuxLossWrapper(ForgeryModel):
    """A :class:`ForgeryModel` that adds an auxiliary loss on the inner model's ``features``.

    ``forward`` returns the inner model's output dict; when the batch has a ``mask`` and the wrapper
    is in training mode (or ``eval_aux_loss`` is set), ``loss`` becomes
    ``inner loss + weight · aux loss`` and ``loss_terms`` gain the auxiliary terms, prefixed with the
    loss name and already multiplied by ``weight`` (so the terms still sum to ``loss``).

    Attributes:
        model: the inner model (state-dict keys ``model.*``).
        aux: the auxiliary loss module (``aux.*``; NCL's projection heads).
    """

    def __init__(
        self,
        model: ForgeryModel,
        aux: torch.nn.Module,
        name: str,
        weight: float = 1.0,
        eval_aux_loss: bool = False,
        aux_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.aux = aux
        self.aux_name = name
        self.weight = float(weight)
        self.eval_aux_loss = bool(eval_aux_loss)
        self.aux_lr_scale = float(aux_lr_scale)
        # The wrapper accepts what the inner model accepts and keeps its identity for checkpoints.
        self.input_size = getattr(model, "input_size", None)
        self.size_divisor = getattr(model, "size_divisor", 1)
        self.has_image_head = getattr(model, "has_image_head", False)
        self.model_name = getattr(model, "model_name", type(model).__name__)
        self.model_kwargs = dict(getattr(model, "model_kwargs", {}))

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = self.model(batch)
        mask = batch.get("mask")
        if mask is None or not (self.training or self.eval_aux_loss):
            return out
        features = out.get("features")
        if not isinstance(features, torch.Tensor) or features.ndim != 4:
            raise ValueError(
                f"{self.model_name} returned no 'features' map (B, C, h, w); the {self.aux_name} auxiliary "
                "loss needs one (see forgeloc.models.base)"
            )
        aux = self.aux(features, mask, batch.get("shape_mask"))
        terms = {f"{self.aux_name}_{k}": self.weight * v for k, v in aux["loss_terms"].items()}
        out["loss"] = out.get("loss", 0.0) + self.weight * aux["loss"]
        out["loss_terms"] = {**out.get("loss_terms", {}), **terms}
        return out

    @property
    def inner(self) -> ForgeryModel:
        """The wrapped model (what inference runs; its config is the checkpoint's)."""
        return self.model

    def inner_state_dict(self) -> dict[str, torch.Tensor]:
        """The inner model's state dict (what inference needs; the auxiliary heads are dropped)."""
        return self.model.state_dict()

    def lr_scale(self, name: str) -> float:
        """Per-parameter lr factor for the engine: the inner model's own (if any), ``aux_lr_scale``
        for the auxiliary heads."""
        if name.startswith("model."):
            inner = getattr(self.model, "lr_scale", None)
            return float(inner(name[len("model."):])) if callable(inner) else 1.0
        return self.aux_lr_scale

    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.model, "no_weight_decay", None)
        return {f"model.{n}" for n in inner()} if callable(inner) else set()


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: AuxLossWrapper) -> dict[str, torch.Tensor]:
    """Accept the inner model's own checkpoint too: un-prefixed keys go under ``model.`` (through
    the inner model's family ``checkpoint_filter_fn``) and the auxiliary heads keep their current
    values. A wrapped model's own checkpoint (``model.*`` keys) is taken as is."""
    sd = dict(state_dict)
    if any(k.startswith("model.") for k in sd):
        return sd
    sd = filter_state_dict(sd, model.model)
    log.info("loading inner-model weights into %s; auxiliary heads keep their initial values", model.aux_name)
    out = {f"model.{k}": v for k, v in sd.items()}
    out.update({f"aux.{k}": v for k, v in model.aux.state_dict().items()})
    return out


def unwrap_aux_loss(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside an :class:`AuxLossWrapper`, or ``model`` itself when it is not wrapped."""
    return model.inner if isinstance(model, AuxLossWrapper) else model


def _infer_feature_channels(model: ForgeryModel) -> int:
    """Channels of ``out["features"]``: the model's ``feature_channels`` attribute, or one probe forward."""
    channels = getattr(model, "feature_channels", None)
    if isinstance(channels, int) and channels > 0:
        return channels
    size = model.native_size() if hasattr(model, "native_size") else 512
    divisor = max(1, int(getattr(model, "size_divisor", 1)))
    size = -(-size // divisor) * divisor
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model({"image": torch.zeros(1, 3, size, size, device=device)})
    finally:
        model.train(was_training)
    features = out.get("features")
    if not isinstance(features, torch.Tensor) or features.ndim != 4:
        raise ValueError(f"{type(model).__name__} returns no 'features' map; an auxiliary loss cannot be added")
    log.info("auxiliary loss: inferred %d feature channels with a probe forward at %d px", features.shape[1], size)
    return int(features.shape[1])


def wrap_with_aux_loss(model: ForgeryModel, cfg: Mapping[str, Any]) -> ForgeryModel:
    """Return ``model`` wrapped so that its loss includes the auxiliary loss described by ``cfg``.

    ``cfg`` keys: ``name`` (required; ``"ncl"``), ``weight`` (default 1.0, multiplies the whole
    auxiliary loss), ``in_channels`` (channels of ``out["features"]``; default: the model's
    ``feature_channels`` attribute, else found with one probe forward), ``eval_aux_loss`` (also in
    eval mode; default False), ``lr_scale`` (lr factor of the auxiliary heads; default 1.0), and
    every option of :class:`~forgeloc.losses.contrastive.NCLLossConfig` (``tau``, ``variant``,
    ``pc_loss``, ``lambda_c``, ``lambda_pc``, ``patch_grid``, ``contour_eps``, ``switch_mode``, ...).
    """
    cfg = dict(cfg)
    name = cfg.get("name")
    if name not in _AUX_LOSSES:
        raise ValueError(f"unknown auxiliary loss {name!r}; available: {list(_AUX_LOSSES)}")
    options = {k: v for k, v in cfg.items() if k not in _WRAPPER_OPTIONS}
    unknown = sorted(set(options) - set(NCLLossConfig.option_names()))
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for aux_loss {name!r}; "
            f"options: {list(_WRAPPER_OPTIONS) + NCLLossConfig.option_names()}"
        )
    in_channels = cfg.get("in_channels") or _infer_feature_channels(model)
    aux = NCLLoss(int(in_channels), **options)
    param = next(model.parameters(), None)
    if param is not None:
        aux.to(param.device)
    return AuxLossWrapper(
        model,
        aux,
        name=name,
        weight=float(cfg.get("weight", 1.0)),
        eval_aux_loss=bool(cfg.get("eval_aux_loss", False)),
        aux_lr_scale=float(cfg.get("lr_scale", 1.0)),
    )
