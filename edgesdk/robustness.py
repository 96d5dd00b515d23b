"""Small perturbations of the verification data, to check bundles move the way PyTorch moves.

Text: upper case, doubled spaces, one typo (two letters swapped in the longest word).
Images: a little noise (uniform +-8 of 255, seeded), a one-pixel shift. Each is
deterministic, so reports are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["PERTURBATIONS", "perturb"]


def _typo(text: str) -> str:
    words = text.split(" ")
    i = max(range(len(words)), key=lambda k: len(words[k]))
    w = words[i]
    if len(w) >= 2:
        mid = len(w) // 2
        words[i] = w[: mid - 1] + w[mid] + w[mid - 1] + w[mid + 1:]
    return " ".join(words)


def _noise(image: np.ndarray, index: int) -> np.ndarray:
    rng = np.random.default_rng(index)
    return np.clip(image.astype(np.int16) + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)


PERTURBATIONS: dict[str, dict[str, Callable]] = {
    "text": {
        "upper case": lambda text, i: text.upper(),
        "doubled spaces": lambda text, i: "  ".join(text.split(" ")),
        "one typo": lambda text, i: _typo(text),
    },
    "image": {
        "noise +-8": _noise,
        "shift 1 px": lambda image, i: np.roll(image, 1, axis=1),
    },
}


def perturb(kind: str, items: list) -> dict[str, list]:
    """Each perturbation of ``kind`` applied to every item."""
    return {name: [f(item, i) for i, item in enumerate(items)] for name, f in PERTURBATIONS[kind].items()}
