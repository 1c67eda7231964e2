"""``vlp plot RUN_DIR``: loss and metric curves of a run to a PNG."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from vlp.train.plot import plot_run

    path = plot_run(args.run_dir, args.image, args.smoothing)
    print(path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plot", help="draw a run's loss and metric curves to RUN_DIR/curves.png")
    parser.add_argument("run_dir", help="run folder holding metrics.jsonl")
    parser.add_argument("--image", default=None, metavar="FILE", help="PNG file to write (default: RUN_DIR/curves.png)")
    parser.add_argument("--smoothing", type=float, default=0.6, help="EMA smoothing in [0, 1); 0 = raw (default 0.6)")
    parser.set_defaults(run=run)
