"""Location tokens (OFA, Wang et al. 2022): a box is written as four vocabulary entries.

A normalized coordinate ``c`` in ``[0, 1]`` becomes bin ``round(c * (N - 1))`` of ``N`` bins, and bin ``k``
stands for the coordinate ``k / (N - 1)``; so the first and last bins are the image's edges and a round
trip moves a coordinate by at most half a bin width (``0.5 / (N - 1)``). A box ``(x0, y0, x1, y1)`` is the
four tokens ``<bin_x0> <bin_y0> <bin_x1> <bin_y1>``. The ``N`` tokens ``<bin_0> .. <bin_{N-1}>`` are added to a
WordPiece tokenizer as special tokens (:func:`add_location_tokens`), so they get the ids right after its
vocabulary, are saved in its ``tokenizer.json`` and are dropped by ``decode`` like the other specials.
"""

from __future__ import annotations

import re

import tokenizers
import torch
from tokenizers import AddedToken

from vlp.text.tokenizer import Tokenizer

_BIN = re.compile(r"<bin_(\d+)>")


def bin_token(k: int) -> str:
    return f"<bin_{k}>"


def _check_bins(bins: int) -> None:
    if not isinstance(bins, int) or bins < 2:
        raise ValueError(f"location bins={bins!r}: expected an integer >= 2 (a bin for each edge of the image)")


def quantize(coords: torch.Tensor, bins: int) -> torch.Tensor:
    """Normalized coordinates in ``[0, 1]`` (any shape) -> bin indices ``round(c * (bins - 1))`` (long)."""
    _check_bins(bins)
    coords = torch.as_tensor(coords, dtype=torch.float64)
    if coords.numel() and (float(coords.min()) < -1e-6 or float(coords.max()) > 1 + 1e-6):
        raise ValueError(
            f"quantize: coordinates range over [{float(coords.min()):.4f}, {float(coords.max()):.4f}]; "
            "expected normalized coordinates in [0, 1]"
        )
    return torch.round(coords.clamp(0, 1) * (bins - 1)).long()


def dequantize(indices: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin indices -> the normalized coordinates they stand for, ``k / (bins - 1)`` (float32)."""
    _check_bins(bins)
    indices = torch.as_tensor(indices)
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= bins):
        raise ValueError(f"dequantize: bin indices range over [{int(indices.min())}, {int(indices.max())}]; "
                         f"expected 0..{bins - 1}")  # fmt: skip
    return indices.float() / (bins - 1)


def add_location_tokens(tokenizer: Tokenizer, bins: int) -> Tokenizer:
    """A copy of ``tokenizer`` with ``<bin_0> .. <bin_{bins-1}>`` appended (the original is unchanged).

    A tokenizer that already has exactly these location tokens comes back as it is.
    """
    _check_bins(bins)
    have = location_bins(tokenizer)
    if have == bins:
        return tokenizer
    if have:
        raise ValueError(f"the tokenizer already has {have} location tokens; cannot add {bins}")
    backend = tokenizers.Tokenizer.from_str(tokenizer.backend.to_str())
    backend.add_special_tokens([AddedToken(bin_token(k), special=True, normalized=False) for k in range(bins)])
    return Tokenizer(backend)


def location_bins(tokenizer: Tokenizer) -> int:
    """How many location tokens ``tokenizer`` has (0 = none)."""
    return sum(1 for token in tokenizer.get_vocab() if _BIN.fullmatch(token))


def location_ids(tokenizer: Tokenizer, bins: int | None = None) -> torch.Tensor:
    """The ids of ``<bin_0> .. <bin_{N-1}>`` in bin order ``(N,)``; ``bins`` (optional) must match N."""
    vocab = tokenizer.get_vocab()
    have = location_bins(tokenizer)
    if have == 0 or (bins is not None and have != bins):
        raise ValueError(
            f"the tokenizer has {have} location tokens <bin_k>, expected {bins or 'some'}; make one with "
            "vlp.text.locations.add_location_tokens(tokenizer, bins) and save it with the model"
        )
    missing = [k for k in range(have) if bin_token(k) not in vocab]
    if missing:
        raise ValueError(f"the tokenizer's location tokens are not <bin_0>..<bin_{have - 1}>: missing {missing[:5]}")
    return torch.tensor([vocab[bin_token(k)] for k in range(have)], dtype=torch.long)


def box_to_ids(boxes: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Normalized xyxy boxes ``(..., 4)`` -> their location-token ids ``(..., 4)`` (``ids``: :func:`location_ids`)."""
    return ids[quantize(boxes, len(ids))]


def ids_to_box(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Location-token ids ``(..., 4)`` -> normalized xyxy boxes (corners sorted, so x0 <= x1 and y0 <= y1)."""
    lookup = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
    lookup[ids] = torch.arange(len(ids))
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if int(tokens.min()) < 0 or int(tokens.max()) >= len(lookup) or bool((lookup[tokens] < 0).any()):
        raise ValueError("ids_to_box: some tokens are not location tokens")
    coords = dequantize(lookup[tokens], len(ids))
    x = torch.sort(coords[..., 0::2], dim=-1).values
    y = torch.sort(coords[..., 1::2], dim=-1).values
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


__all__ = [
    "add_location_tokens",
    "bin_token",
    "box_to_ids",
    "dequantize",
    "ids_to_box",
    "location_bins",
    "location_ids",
    "quantize",
]
