"""Model families (one file each) and the registry. See :mod:`forgeloc.models.base` for the contract."""

from forgeloc.models.base import ForgeryModel
from forgeloc.models.registry import create_model, list_models, register_model

__all__ = ["ForgeryModel", "create_model", "list_models", "register_model"]
