"""Torch-free bundle loader: open a bundle, check every file, tokenize, run, classify.

Importing this package never imports torch; apps need only numpy, tokenizers and the
bundle's runtime.
"""

from .bundle import MANIFEST, SCHEMA_VERSION, Bundle, Prediction, file_sha256, load_bundle
from .encode import Encoder, ImageEncoder, TextEncoder, row_digest
from .runner import Runner

__all__ = [
    "MANIFEST",
    "SCHEMA_VERSION",
    "Bundle",
    "Encoder",
    "ImageEncoder",
    "Prediction",
    "Runner",
    "TextEncoder",
    "file_sha256",
    "load_bundle",
    "row_digest",
]
