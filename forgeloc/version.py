"""forgeloc's version: a leaf module, so that any layer can record it without importing the package's
top level (which imports the model registry and the predictor)."""

__version__ = "0.1.0"
