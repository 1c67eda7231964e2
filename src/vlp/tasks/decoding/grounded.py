"""The decode step of the image-grounded decoder, shared by captioning and generative VQA: decoding
options and :func:`grounded_generate` (prompt ids + cross-attention context -> text)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vlp.config import ConfigError
from vlp.core.outputs import VisualTokens
from vlp.tasks.decoding.beam import beam_search
from vlp.tasks.decoding.sampling import greedy_decode, sample_decode


@dataclass
class DecodeOptions:
    """How the image-grounded decoder generates text (see :mod:`vlp.tasks.decoding`).

    ``strategy``: ``greedy``, ``beam`` (``num_beams``, ``length_penalty``: scores are divided by
    ``length ** length_penalty``) or ``nucleus`` (sampling from the top-``top_p`` mass; ``seed``
    makes it reproducible). Lengths count generated tokens, end token included.
    """

    strategy: str = "beam"
    num_beams: int = 3
    max_new_tokens: int = 20
    min_new_tokens: int = 0
    length_penalty: float = 1.0
    top_p: float = 0.9
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "beam", "nucleus"):
            raise ValueError(f"strategy must be greedy, beam or nucleus, got {self.strategy!r}")


def grounded_generate(model: Any, tokenizer: Any, prompt: Any, context: Any, options: DecodeOptions) -> list[str]:
    """Decode from ``prompt`` ids ``(B, T0)`` with the decoder cross-attending to ``context``
    (:class:`~vlp.core.outputs.VisualTokens` ``(B, N, D)``: image tokens, or BLIP's fused question);
    returns the generated text of each row, prompt excluded, special tokens dropped.
    """
    if getattr(model, "decoder", None) is None:
        raise ConfigError(f"model {model.cfg.name!r} has no text decoder (model.decoder): it cannot generate text")

    # tokens that may never be generated: [PAD] [CLS] [MASK] and ids the tokenizer cannot decode
    # (a model's vocab_size may exceed a small tokenizer's)
    banned = [tokenizer.pad_id, tokenizer.cls_id, tokenizer.mask_id]

    def step(tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        # no KV cache: the whole prefix is re-run each step (answers and captions are short)
        logits = model.decode(tokens, None, VisualTokens(state[0], state[1]))[:, -1].float()
        logits[:, banned] = float("-inf")
        logits[:, tokenizer.vocab_size :] = float("-inf")
        return logits

    common = {
        "max_new_tokens": options.max_new_tokens, "eos_token_id": tokenizer.sep_id, "pad_token_id": tokenizer.pad_id,
        "min_new_tokens": options.min_new_tokens, "repetition_penalty": options.repetition_penalty,
        "state": (context.tokens, context.mask),
    }  # fmt: skip
    with torch.no_grad():
        if options.strategy == "greedy":
            out = greedy_decode(step, prompt, **common)
        elif options.strategy == "beam":
            out = beam_search(step, prompt, num_beams=options.num_beams, length_penalty=options.length_penalty,
                              **common)  # fmt: skip
        else:
            generator = None
            if options.seed is not None:
                generator = torch.Generator(device=prompt.device).manual_seed(options.seed)
            out = sample_decode(step, prompt, top_p=options.top_p, temperature=options.temperature,
                                generator=generator, **common)  # fmt: skip
    return [text.strip() for text in tokenizer.batch_decode(out.new_tokens.cpu())]


__all__ = ["DecodeOptions", "grounded_generate"]
