"""Exhaustive vs two-stage (ITC shortlist + pairwise re-rank) retrieval: cost and recall.

The setting mirrors COCO 5k-test evaluation in ALBEF/BLIP: 1k images x 5k
captions (5 per image), a cheap dual-encoder similarity and an expensive
pairwise scorer. Everything is synthetic but built so that the numbers mean
something:

- every image is a set of region tokens; a caption mentions a random subset of
  its image's regions (noisy copies), so captions of one image differ;
- the dual encoder mean-pools tokens through a lossy random projection: fast,
  imperfect recall;
- the pairwise scorer is a cross-attention fusion (a ``vlp.layers.Transformer``
  with cross-attention, text attending to image tokens) followed by a sharp
  token-level match: each fused text token attends to its best image token and
  the agreements are averaged. It runs per pair, like an ITM head, and is much
  more accurate than the dual encoder.

Exhaustive scoring of all 5M pairs takes too long on a small CPU, so by default
its cost is extrapolated from a timed sample of pairs, and its recall is
measured on a random subset of queries (every pair of those queries is scored).
``--full`` runs it for real. Run: ``python benchmarks/bench_retrieval.py``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from vlp.layers import Transformer
from vlp.metrics import retrieval_metrics
from vlp.metrics.retrieval import i2t_ranks, t2i_ranks
from vlp.tasks.retrieval_search import exhaustive, rerank, similarity_matrix


def make_data(n_images: int, per_image: int, img_tokens: int, txt_tokens: int, dim: int, gen: torch.Generator):
    """Image tokens (N_i, Ti, D), caption tokens (N_t, Tt, D), txt2img (N_t,)."""
    images = F.normalize(torch.randn(n_images, img_tokens, dim, generator=gen), dim=-1)
    txt2img = torch.arange(n_images).repeat_interleave(per_image)
    pick = torch.randint(0, img_tokens, (txt2img.numel(), txt_tokens), generator=gen)
    mentioned = images[txt2img[:, None], pick]  # each caption mentions some of its image's regions
    noise = torch.randn(mentioned.shape, generator=gen) / dim**0.5  # norm ~1 per token
    texts = F.normalize(mentioned + 0.5 * noise, dim=-1)
    return images, texts, txt2img


class CrossScorer(nn.Module):
    """Pairwise match score from a cross-attention fusion of text tokens over image tokens."""

    def __init__(self, dim: int, depth: int, heads: int, sharpness: float = 20.0) -> None:
        super().__init__()
        self.fusion = Transformer(dim, depth, heads, mlp_dim=2 * dim, cross_attention=True)
        with torch.no_grad():  # an untrained fusion: small residual updates keep the token identities
            for p in self.fusion.parameters():
                if p.dim() > 1:
                    p.mul_(0.05)
        self.sharpness = sharpness

    @torch.no_grad()
    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        fused = F.normalize(self.fusion(text, context=image), dim=-1)  # (P, Tt, D)
        sim = fused @ image.transpose(1, 2)  # (P, Tt, Ti)
        attended = torch.softmax(self.sharpness * sim, dim=-1) @ image  # soft best-matching region
        return (fused * attended).sum(-1).mean(-1)  # (P,)


def recall_table(ranks_i2t: torch.Tensor, ranks_t2i: torch.Tensor) -> str:
    parts = [f"{100 * (ranks_i2t < k).double().mean():5.1f}" for k in (1, 5, 10)]
    parts += [f"{100 * (ranks_t2i < k).double().mean():5.1f}" for k in (1, 5, 10)]
    return " ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--per-image", type=int, default=5)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--ks", type=int, nargs="+", default=[16, 32, 128])
    ap.add_argument("--batch", type=int, default=4096, help="pairs per scorer call")
    ap.add_argument("--timing-pairs", type=int, default=20000, help="pairs timed to extrapolate exhaustive cost")
    ap.add_argument("--eval-queries", type=int, default=100, help="queries per direction for exhaustive recall")
    ap.add_argument("--full", action="store_true", help="score all pairs exhaustively instead of extrapolating")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    images, texts, txt2img = make_data(args.images, args.per_image, 12, 8, args.dim, gen)
    n_i, n_t = images.shape[0], texts.shape[0]
    proj = torch.randn(args.dim, args.dim // 2, generator=gen)  # lossy dual-encoder projection
    image_emb = F.normalize(images.mean(1) @ proj, dim=-1)
    text_emb = F.normalize(texts.mean(1) @ proj, dim=-1)
    model = CrossScorer(args.dim, args.depth, heads=4).eval()
    pairs_scored = 0

    def score_fn(image_idx: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
        nonlocal pairs_scored
        pairs_scored += image_idx.numel()
        return model(texts[text_idx], images[image_idx])

    print(f"{n_i} images x {n_t} captions = {n_i * n_t:,} pairs; scorer: cross-attention fusion, "
          f"dim {args.dim}, depth {args.depth}; torch threads: {torch.get_num_threads()}")  # fmt: skip

    t0 = time.perf_counter()
    sim = similarity_matrix(image_emb, text_emb)
    itc_time = time.perf_counter() - t0
    header = f"{'method':<22}{'scorer pairs':>14}{'wall s':>10}{'cost x':>9}   i2t R@1/5/10      t2i R@1/5/10"
    print(header + "\n" + "-" * len(header))
    img2txt = [list(range(i * args.per_image, (i + 1) * args.per_image)) for i in range(n_i)]
    itc_row = recall_table(i2t_ranks(sim, img2txt), t2i_ranks(sim, txt2img))
    print(f"{'ITC only':<22}{0:>14,}{itc_time:>10.2f}{'':>9}   {itc_row}")

    # exhaustive: time a sample of pairs (or everything with --full)
    if args.full:
        t0 = time.perf_counter()
        full = exhaustive(score_fn, n_i, n_t, args.batch)
        ex_time = time.perf_counter() - t0
        m = retrieval_metrics(full, txt2img, img2txt)
        ex_row = " ".join(f"{m[k]:5.1f}" for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"))
        ex_note = "measured"
    else:
        sample = torch.randint(0, n_i * n_t, (args.timing_pairs,), generator=gen)
        t0 = time.perf_counter()
        for s in range(0, sample.numel(), args.batch):
            score_fn(sample[s : s + args.batch] // n_t, sample[s : s + args.batch] % n_t)
        ex_time = (time.perf_counter() - t0) / sample.numel() * n_i * n_t
        # recall on random query subsets: every candidate of those queries is scored
        q_img = torch.randperm(n_i, generator=gen)[: args.eval_queries]
        q_txt = torch.randperm(n_t, generator=gen)[: args.eval_queries]
        rows = torch.stack([exhaustive(lambda i, t, q=q: score_fn(i + q, t), 1, n_t, args.batch)[0] for q in q_img])
        cols = torch.stack([exhaustive(lambda i, t, q=q: score_fn(i, t + q), n_i, 1, args.batch)[:, 0] for q in q_txt])
        ex_row = recall_table(i2t_ranks(rows, [img2txt[q] for q in q_img]), t2i_ranks(cols.T, txt2img[q_txt]))
        ex_note = (
            f"cost extrapolated from {args.timing_pairs:,} timed pairs; "
            f"recall measured on {args.eval_queries} random queries per direction"
        )
    print(f"{'exhaustive':<22}{n_i * n_t:>14,}{ex_time:>10.1f}{1.0:>9.1f}   {ex_row}")

    for k in args.ks:
        pairs_scored = 0
        t0 = time.perf_counter()
        two = rerank(sim, score_fn, k, batch_size=args.batch)
        wall = time.perf_counter() - t0 + itc_time
        m = retrieval_metrics(two.i2t, txt2img, img2txt, sim_t2i=two.t2i)
        row = " ".join(f"{m[key]:5.1f}" for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"))
        print(f"{f'two-stage k={k}':<22}{two.num_pairs:>14,}{wall:>10.2f}{ex_time / wall:>9.1f}   {row}")
    print(f"\nexhaustive: {ex_note}.")
    print("cost x = exhaustive wall time / this method's wall time (ITC matmul included in two-stage).")


if __name__ == "__main__":
    main()
