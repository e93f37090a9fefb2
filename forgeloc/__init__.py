"""forgeloc: image manipulation localization for researchers and practitioners.

Public API (small on purpose)::

    import forgeloc
    model = forgeloc.create_model("sparsevit", checkpoint="sparsevit.safetensors")
    forgeloc.list_models()
"""

from forgeloc.models.registry import create_model, list_models, register_model

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "register_model"]
