"""Shared pieces of the interop tests: tiny tokenizer files, weight perturbation, comparisons."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TOL = 1e-4

CORPUS = [
    "a photo of a red circle",
    "two blue squares left of a green triangle",
    "the large yellow circle is above the small square",
    "A Photo Of Three Triangles!",
    "what color is the shape on the right?",
]

BERT_WORDS = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] a photo of red circle two blue square ##s left green triangle the large "
    "yellow is above small what color shape on right ? , . ! three"
).split()


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Move every parameter off its initial value (LayerNorms off 1/0, zero biases off 0), so that a
    mapping that swaps or drops a tensor cannot hide behind identical initial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=g) * scale)
    return model.eval()


def write_bert_vocab(folder: Path) -> Path:
    """A tiny WordPiece vocab.txt + tokenizer_config.json that BertTokenizerFast and vlp both read."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(BERT_WORDS) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}), encoding="utf-8")
    return folder


def train_clip_bpe(folder: Path, vocab_size: int = 400) -> Path:
    """A tiny CLIP-style byte-level BPE (``vocab.json`` + ``merges.txt``) trained on :data:`CORPUS`."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    folder.mkdir(parents=True, exist_ok=True)
    backend = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    backend.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS * 3, trainer=trainer)
    data = json.loads(backend.to_str())["model"]
    vocab = data["vocab"]
    # CLIP puts its two specials last (the end-of-text id is the highest, which legacy pooling relies on)
    ordered = [t for t in sorted(vocab, key=vocab.get) if not t.startswith("<|")] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(ordered)}), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return float((a - b).detach().abs().max())


def close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> None:
    diff = max_diff(a, b)
    assert diff < tol, f"max abs difference {diff:.3g} >= {tol}"


def close_as_sets(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> None:
    """Rows of ``a`` (N, D) equal the rows of ``b`` in some order (ViLT shuffles its patch tokens)."""
    dist = torch.cdist(a.detach(), b.detach(), p=float("inf"))
    nearest = dist.argmin(dim=1)
    assert sorted(nearest.tolist()) == list(range(b.shape[0])), "not a permutation"
    assert float(dist.min(dim=1).values.max()) < tol


def padded_ids(lengths: list[int], vocab: int, first: int, last: int, pad: int, seed: int = 0):
    """``(ids, mask)``: rows ``[first, random..., last]`` of the given lengths, right-padded with ``pad``."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(5, vocab, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = first, last
        mask[i, :n] = True
    return ids, mask


def check_dual_encoder(model, reference, ids, mask, images, vision_norm=None) -> None:
    """A vlp dual encoder (CLIP, SigLIP) against transformers' ``reference`` on one padded batch:
    embeddings, logits (with ``logit_bias`` when the model has one), text hidden states at the real
    tokens (last layer and first), and every visual token (``vision_norm``, when given, applied to
    transformers' last hidden state first: CLIP normalizes only its pooled [CLS])."""
    with torch.no_grad():
        ref = reference(input_ids=ids, attention_mask=mask.long(), pixel_values=images, output_hidden_states=True)
        text, states = model.text(ids, mask, return_all=True)
        text_embed, image_embed = model.encode_text(ids, mask), model.encode_image(images)
        close(text_embed, ref.text_embeds)
        close(image_embed, ref.image_embeds)
        logits = model.logit_scale.exp() * text_embed @ image_embed.T
        if model.logit_bias is not None:
            logits = logits + model.logit_bias
        close(logits, ref.logits_per_text)
        # hidden states at the real (unpadded) tokens, layer by layer
        close(text[mask], ref.text_model_output.last_hidden_state[mask])
        close(states[0][mask], ref.text_model_output.hidden_states[1][mask])
        visual = ref.vision_model_output.last_hidden_state
        close(model.image_tokens(images).tokens, visual if vision_norm is None else vision_norm(visual))
