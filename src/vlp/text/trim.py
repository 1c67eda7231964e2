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

import weakref

import torch
import torch.nn.functional as F

# The cuts of the last few masks seen: a training step asks for the cut of the same mask several times
# (text tower, fusion, MLM's second pass, the momentum model), and each answer costs a host sync. An
# entry is found only for the very same mask tensor (a weak reference, so that a freed tensor whose id
# is reused never matches) at the same ``_version`` (an in-place edit invalidates it), and, when the
# pool looks for a token in the ids, the very same unchanged ids tensor.
_CUTS: list[tuple] = []
_CUTS_KEPT = 8


def _same(ref: weakref.ref | None, version: int, tensor: torch.Tensor | None) -> bool:
    if ref is None or tensor is None:
        return ref is None and tensor is None
    return ref() is tensor and version == tensor._version


def _measure(mask: torch.Tensor, ids: torch.Tensor | None, pooling: str, eos_id: int) -> int:
    """Last kept position + 1 over all rows (and past the pooled token of each row): the one host sync."""
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    needed = [(mask.bool() * positions).amax()]
    if ids is not None:
        if pooling == "argmax":
            needed.append(ids.argmax(dim=1).amax() + 1)
        else:
            needed.append((ids == eos_id).int().argmax(dim=1).amax() + 1)
    return int(torch.stack(needed).amax().clamp_min(1))


def trimmed_length(
    attention_mask: torch.Tensor,
    multiple: int = 8,
    input_ids: torch.Tensor | None = None,
    pooling: str = "cls",
    eos_id: int = -1,
) -> int:
    """The length ``n <= L`` a ``(B, L)`` text batch can be cut to without changing kept positions or the pool.

    ``multiple <= 0`` or ``pooling == "last"``: ``L`` (no cut). One host sync (the ``int``), once per mask:
    asked again for the same mask tensor (unchanged, and the same ids where the pool reads them), the
    answer is remembered. Under ``torch.compile`` no cut (a data-dependent length would break the graph).
    """
    length = attention_mask.shape[1]
    if multiple <= 0 or pooling == "last" or length <= multiple or torch.compiler.is_compiling():
        return length
    reads_ids = input_ids is not None and input_ids.shape == attention_mask.shape
    reads_ids = reads_ids and (pooling == "argmax" or (pooling == "eos" and eos_id >= 0))
    ids = input_ids if reads_ids else None
    params = (multiple, pooling, eos_id) if reads_ids else (multiple,)
    # inference tensors keep no version counter: they are measured every time (one call per batch anyway)
    cacheable = not attention_mask.is_inference() and (ids is None or not ids.is_inference())
    for mask_ref, mask_version, ids_ref, ids_version, entry_params, n in _CUTS if cacheable else ():
        if not _same(mask_ref, mask_version, attention_mask):
            continue
        # a cut that also kept a pooled token is still a valid (never shorter) cut for the mask alone
        if (entry_params == params and _same(ids_ref, ids_version, ids)) or (
            not reads_ids and entry_params[0] == multiple
        ):
            return n
    n = min(length, -(-_measure(attention_mask, ids, pooling, eos_id) // multiple) * multiple)
    if cacheable:
        ids_entry = (weakref.ref(ids), ids._version) if ids is not None else (None, 0)
        _CUTS.insert(0, (weakref.ref(attention_mask), attention_mask._version, *ids_entry, params, n))
        del _CUTS[_CUTS_KEPT:]
    return n


def cut(x: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """The first ``n`` positions of ``(B, L, ...)`` (None stays None)."""
    return x if x is None or x.shape[1] == n else x[:, :n]


def pad_back(x: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Zero-pad ``(B, n, D)`` back to ``(B, length, D)`` (None stays None)."""
    if x is None or x.shape[1] == length:
        return x
    return F.pad(x, (0, 0, 0, length - x.shape[1]))


__all__ = ["cut", "pad_back", "trimmed_length"]
