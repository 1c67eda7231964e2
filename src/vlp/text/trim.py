"""Drop trailing padding before the text tower and the fusion module: compute less, exactly.

A text batch padded to ``L`` is cut to the longest real length in the batch (the last kept
position of ``attention_mask`` over all rows), rounded up to a multiple (8 by default) and never
above ``L``; the outputs are padded back with zeros to ``L`` so that every caller keeps its shapes.
At the kept positions this is exact for the towers vlp builds:

- masked bidirectional layers (BERT, the fusion stacks): padding keys are masked out, so the
  dropped positions never reach a kept one;
- causal layers (CLIP's text tower): position ``i`` reads positions ``<= i`` only, and the dropped
  positions all come after every kept one.

The pooled position must survive the cut: ``cls`` / ``mean`` / ``eos`` (the last kept token) lie
within the kept length; ``eos`` with an end-token id and ``argmax`` pool at a position found in the
ids, which is kept as well (even when it falls in the padding). ``last`` (SigLIP: the last position,
padding or not) is never trimmed. Only the values at dropped (padding) positions change (zeros
instead of what the padded pass computed there), and nothing reads them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def trimmed_length(
    attention_mask: torch.Tensor,
    multiple: int = 8,
    input_ids: torch.Tensor | None = None,
    pooling: str = "cls",
    eos_id: int = -1,
) -> int:
    """The length ``n <= L`` a ``(B, L)`` text batch can be cut to without changing kept positions or the pool.

    ``multiple <= 0`` or ``pooling == "last"``: ``L`` (no cut). One host sync (the ``int``); under
    ``torch.compile`` no cut either (a data-dependent length would break the graph or recompile it).
    """
    length = attention_mask.shape[1]
    if multiple <= 0 or pooling == "last" or length <= multiple or torch.compiler.is_compiling():
        return length
    positions = torch.arange(1, length + 1, device=attention_mask.device)
    needed = [(attention_mask.bool() * positions).amax()]  # last kept position + 1, over all rows
    if input_ids is not None and input_ids.shape == attention_mask.shape:
        if pooling == "argmax":
            needed.append(input_ids.argmax(dim=1).amax() + 1)
        elif pooling == "eos" and eos_id >= 0:
            needed.append((input_ids == eos_id).int().argmax(dim=1).amax() + 1)
    n = int(torch.stack(needed).amax().clamp_min(1))
    return min(length, -(-n // multiple) * multiple)


def cut(x: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """The first ``n`` positions of ``(B, L, ...)`` (None stays None)."""
    return x if x is None or x.shape[1] == n else x[:, :n]


def pad_back(x: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Zero-pad ``(B, n, D)`` back to ``(B, length, D)`` (None stays None)."""
    if x is None or x.shape[1] == length:
        return x
    return F.pad(x, (0, 0, 0, length - x.shape[1]))


__all__ = ["cut", "pad_back", "trimmed_length"]
