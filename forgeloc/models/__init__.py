"""Model families (one file each), the registry and the factory. See :mod:`forgeloc.models.base`
for the contract, :mod:`forgeloc.models.registry` for names → constructors and
:mod:`forgeloc.models.factory` for building models and loading checkpoints."""

from forgeloc.models.base import ForgeryModel
from forgeloc.models.factory import create_model, load_model
from forgeloc.models.registry import list_models, register_model

__all__ = ["ForgeryModel", "create_model", "list_models", "load_model", "register_model"]
