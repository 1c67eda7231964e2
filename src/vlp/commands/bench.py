"""``vlp bench taxonomy``: the survey's architecture families trained alike and measured (vlp.demo.taxonomy)."""

from __future__ import annotations

import argparse


def run_taxonomy(args: argparse.Namespace) -> int:
    from vlp.demo.taxonomy import TaxonomyConfig, run_taxonomy

    changes = {
        "budget_steps": args.budget_steps, "finetune_steps": args.finetune_steps, "images": args.images,
        "retrieval_images": args.retrieval_images, "families": args.families, "threads": args.threads,
    }  # fmt: skip
    config = TaxonomyConfig(**{k: v for k, v in changes.items() if v is not None})
    run_taxonomy(args.out, config)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks that train and measure models")
    benches = parser.add_subparsers(dest="bench", metavar="BENCH")
    parser.set_defaults(run=lambda args: parser.print_help() or 2)
    taxonomy = benches.add_parser(
        "taxonomy",
        help="train each architecture family of the survey alike; one table of scores, size and latency",
        description="Single-stream (region, grid, patch), dual-stream co-attention, dual encoder, fusion + dual "
        "(ALBEF), mixture of modality experts (VLMo) and a unified encoder-decoder (OFA), each pretrained on the "
        "same ShapesWorld data for the same steps, then retrieval R@1/RSUM, VQA and referring-expression "
        "accuracy, parameters and latency per retrieval query and per VQA question. Writes OUT/taxonomy.md and "
        "OUT/results.json.",
    )
    taxonomy.add_argument("--out", default="runs/taxonomy", help="output folder (default: runs/taxonomy)")
    taxonomy.add_argument("--budget-steps", type=int, default=None, help="pretraining steps per family (1000)")
    taxonomy.add_argument("--finetune-steps", type=int, default=None, help="fine-tuning steps per task (300)")
    taxonomy.add_argument("--images", type=int, default=None, help="ShapesWorld images (2000)")
    taxonomy.add_argument("--retrieval-images", type=int, default=None, help="test images in the gallery (100)")
    taxonomy.add_argument("--families", nargs="+", default=None, metavar="RECIPE",
                          help="recipes to run (default: all eight families)")  # fmt: skip
    taxonomy.add_argument("--threads", type=int, default=None, help="torch threads (default: 1)")
    taxonomy.set_defaults(run=run_taxonomy)
