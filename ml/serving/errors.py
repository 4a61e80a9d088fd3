"""The serving package's exceptions, in a module of their own so every module can raise them
without importing the artifact loader (which imports the compiled model)."""
from __future__ import annotations


class ArtifactError(RuntimeError):
    """The artifact is missing, tampered with, unsigned, or built with incompatible libraries."""


class SignatureError(ArtifactError):
    """The artifact's signed manifest is missing, wrong, by an untrusted key, or disagrees
    with the files it lists."""


class UnsupportedModelError(ArtifactError):
    """The model is not one the compiled model can reproduce exactly."""
