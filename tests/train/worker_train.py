"""Runs the toy training job in its own process (for SIGKILL/SIGTERM and torchrun tests).

usage: python worker_train.py RUN_DIR [--steps N] [--batch-size B] [--delay S] [--dropout P]
       [--hold-at F --release PATH] [--checkpoint-every K] [--distributed ddp|fsdp] [--ema D]
       [--schedule NAME] [--resume-to M] [--resume] [--overwrite]

``--hold-at F --release PATH``: the F-th forward waits until PATH exists (a signal or a kill at a
known step). ``--resume-to M`` trains to N steps, then (same processes, fresh model) resumes the run to M
steps: a save/load round trip under DDP or FSDP.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from toy_train import run_toy  # noqa: E402

from vlp.train.distributed import cleanup, exit_process, init_distributed  # noqa: E402
from vlp.train.guards import TrainingAborted  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--hold-at", type=int, default=0)
    parser.add_argument("--release", default="")
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--distributed", default="ddp")
    parser.add_argument("--ema", type=float, default=0.0)
    parser.add_argument("--schedule", default="cosine")
    parser.add_argument("--resume-to", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # same kernels as the in-process runs it is compared with
    info = init_distributed("cpu")
    try:
        common = {
            "batch_size": args.batch_size,
            "delay": args.delay,
            "dropout": args.dropout,
            "hold_at": args.hold_at,
            "release": args.release,
            "train": {
                "checkpoint_every": args.checkpoint_every,
                "distributed": args.distributed,
                "ema_decay": args.ema,
            },
            "schedule": {"name": args.schedule},
            "dist": info,
        }
        result, _ = run_toy(args.run_dir, steps=args.steps, resume=args.resume, overwrite=args.overwrite, **common)
        if args.resume_to:
            result, _ = run_toy(args.run_dir, steps=args.resume_to, resume=True, **common)
    except TrainingAborted as err:
        print(f"aborted: {err}", file=sys.stderr)
        return 1
    finally:
        cleanup()
    print(json.dumps(result.to_dict()))
    return 143 if result.stopped_by == "SIGTERM" else 130 if result.stopped_by else 0


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        exit_process(code)
    sys.exit(code)
