"""Grouped-query attention's repeated key and value heads written as ``cat`` while litert-torch converts.

Llama- and Qwen2-style attention, with fewer key/value heads than query heads, repeats each
key head as ``x[:, :, None].expand(b, kv, n, s, d)`` before a MatMul reads it transposed.
litert-torch 0.10 miscomputes that MatMul when there is one key/value head (multi-query
attention), so the repeated keys are one broadcast: on ``q @ k.expand(1, 2, 16, 16).transpose(2,
3)`` the .tflite's error (19.1) exceeded the largest output (18.6), and a tiny random Llama
classifier's logits were off by 0.4%. The same keys concatenated, or transposed before the
expand, convert exactly, so during conversion a 5-D ``expand`` along axis 2 alone is written as
``cat`` of that many copies (the same values).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["RepeatedHeadsByConcat"]


class RepeatedHeadsByConcat(TorchFunctionMode):
    """Within it, ``Tensor.expand`` of a 5-D tensor along axis 2 alone (from 1) is ``torch.cat``."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is torch.Tensor.expand and len(args) > 1:
            x = args[0]
            sizes = tuple(args[1]) if len(args) == 2 and isinstance(args[1], (tuple, list, torch.Size)) else args[1:]
            grown = [axis for axis, (old, new) in enumerate(zip(x.shape, sizes)) if new not in (-1, old)]
            if x.dim() == 5 and len(sizes) == 5 and grown == [2] and x.shape[2] == 1 and isinstance(sizes[2], int):
                return torch.cat([x] * sizes[2], dim=2)
        return func(*args, **(kwargs or {}))
