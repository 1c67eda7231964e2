"""``vlp tokenizer``: train a WordPiece tokenizer on a caption corpus, or show how one tokenizes text."""

from __future__ import annotations

import argparse
import sys


def _show(tokenizer, text: str, max_length: int) -> None:
    encoded = tokenizer([text], max_length=max_length)
    ids = encoded.input_ids[0].tolist()
    print(f"text      {text}")
    print(f"tokens    {' '.join(tokenizer.convert_ids_to_tokens(ids))}")
    print(f"ids       {ids}")
    print(f"word_ids  {encoded.word_ids[0].tolist()}")


def _fail(args: argparse.Namespace, err: Exception) -> int:
    print(f"vlp tokenizer {args.action}: {err}", file=sys.stderr)
    return 2


def run_train(args: argparse.Namespace) -> int:
    from vlp.text.corpus import read_captions
    from vlp.text.tokenizer import Tokenizer

    try:
        captions = read_captions(args.input)
        tokenizer = Tokenizer.train(
            captions, vocab_size=args.vocab_size, min_frequency=args.min_frequency, lowercase=not args.cased
        )
        if args.location_bins:  # OFA's location tokens <bin_0>.. after the vocabulary (vlp.text.locations)
            from vlp.text.locations import add_location_tokens

            tokenizer = add_location_tokens(tokenizer, args.location_bins)
        folder = tokenizer.save(args.out)
    except (OSError, ValueError) as err:
        return _fail(args, err)
    print(f"read {len(captions)} captions from {args.input}")
    print(f"vocab size {tokenizer.vocab_size} (asked for at most {args.vocab_size}) -> {folder}")
    _show(tokenizer, captions[0], args.max_length)
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from vlp.text.tokenizer import Tokenizer

    try:
        tokenizer = Tokenizer.load(args.tokenizer)
        for text in args.text:
            _show(tokenizer, text, args.max_length)
    except (OSError, ValueError) as err:
        return _fail(args, err)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenizer", help="train a WordPiece tokenizer on captions, or encode text")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    train = actions.add_parser(
        "train",
        help="train on captions and save tokenizer.json, vocab.txt and tokenizer_config.json",
        description="Input: a .txt file (one caption per line), a Karpathy-split / ALBEF / COCO caption .json, "
        'or a .jsonl with a "caption" or "text" key per line.',
    )
    train.add_argument("--input", required=True, help="caption file (.txt, .json or .jsonl)")
    train.add_argument("--out", required=True, help="folder to write the tokenizer into")
    train.add_argument("--vocab-size", type=int, default=8000, help="largest vocabulary, specials included")
    train.add_argument("--min-frequency", type=int, default=1, help="fewest occurrences of a merged piece")
    train.add_argument("--cased", action="store_true", help="keep case and accents (default: lowercase)")
    train.add_argument("--location-bins", type=int, default=0,
                       help="append N location tokens <bin_0>..<bin_N-1> for boxes (OFA; default: none)")  # fmt: skip
    train.add_argument("--max-length", type=int, default=40, help="max length of the printed example")
    train.set_defaults(run=run_train)

    encode = actions.add_parser("encode", help="print the tokens, ids and word ids of some text")
    encode.add_argument("--tokenizer", required=True, help="tokenizer folder, tokenizer.json or vocab.txt")
    encode.add_argument("--max-length", type=int, default=40, help="longest token sequence, specials included")
    encode.add_argument("text", nargs="+", help="text(s) to tokenize")
    encode.set_defaults(run=run_encode)
