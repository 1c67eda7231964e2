"""``vlp convert``: import transformers / OpenCLIP checkpoints into vlp model folders, or export back."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _summary(folder: Path) -> None:
    from vlp.io.saving import load_config

    cfg, _ = load_config(folder)
    parts = [
        f"{p}={type(getattr(cfg, p)).__name__}" for p in ("text", "vision", "fusion", "decoder") if getattr(cfg, p)
    ]
    print(f"model      {cfg.name}: {', '.join(parts)}; heads: {', '.join(cfg.heads) or '-'}")
    print(f"files      {', '.join(sorted(p.name for p in folder.iterdir()))}")
    record = folder / "interop.json"
    if record.is_file():
        import json

        data = json.loads(record.read_text(encoding="utf-8"))
        if data.get("data"):
            print(f"data       {data['data']}")
        for name, why in data.get("vlp_only", {}).items():
            print(f"vlp only   {name}: {why}")


def _source_kind(src: Path) -> str:
    """``openclip`` for a state dict file or an OpenCLIP hub folder without a transformers config.json."""
    from vlp.interop.openclip_config import is_openclip_folder

    if src.is_file() or (is_openclip_folder(src) and not (src / "config.json").is_file()):
        return "openclip"
    return "transformers"


def run(args: argparse.Namespace) -> int:
    from vlp.interop.common import ConversionError

    src, dst = Path(args.src), Path(args.dst)
    try:
        if args.to != "transformers":
            from vlp.interop.hub import resolve

            src = resolve(args.src)  # a local path, or a hub model id (Hugging Face cache, then download)
        if args.to == "transformers":
            from vlp.interop.hf import export_folder

            export_folder(src, dst, architecture=args.arch, overwrite=args.overwrite)
            print(f"exported   {src} -> {dst} (transformers)")
            print(f"files      {', '.join(sorted(p.name for p in dst.iterdir()))}")
            return 0
        source = args.source or _source_kind(src)
        if source == "openclip":
            from vlp.interop.openclip import import_openclip

            import_openclip(
                src, dst, act=args.act, tokenizer=args.tokenizer, overwrite=args.overwrite, config=args.openclip_config
            )
        else:
            from vlp.interop.hf import import_folder

            if args.tokenizer or args.act is not None or args.openclip_config:
                raise ConversionError(
                    "--tokenizer, --act and --openclip-config apply to --from openclip; a transformers folder has all"
                )
            import_folder(src, dst, overwrite=args.overwrite)
        print(f"imported   {src} ({source}) -> {dst}")
        _summary(dst)
        return 0
    except (ConversionError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"vlp convert: {err}", file=sys.stderr)
        return 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="import a transformers or OpenCLIP checkpoint into a vlp model folder (or export back)",
        description="Import: SRC is a transformers folder (config.json + model.safetensors / pytorch_model.bin) of "
        "CLIPModel, ViltModel (+ VQA / retrieval / MLM heads), BlipForImageTextRetrieval, "
        "BlipForConditionalGeneration, LxmertModel or VisualBertModel, or an OpenCLIP state dict file (.pt/.bin read "
        "with weights_only, or .safetensors) or hub folder (open_clip_config.json + weights). SRC may be a Hugging "
        "Face model id (org/name): it is read from the local hub cache, else downloaded when huggingface_hub is "
        "installed and online. DST becomes a vlp folder with the weights, recipe.yaml, tokenizer "
        "files and preprocess.json. Export (--to transformers): SRC is a vlp folder, DST a transformers folder.",
    )
    parser.add_argument(
        "src", help="checkpoint folder, OpenCLIP state dict file or hub folder, or a hub model id (org/name)"
    )
    parser.add_argument("dst", help="output folder (must be empty unless --overwrite)")
    parser.add_argument("--to", choices=("vlp", "transformers"), default="vlp", help="direction (default: vlp)")
    parser.add_argument(
        "--from", dest="source", choices=("transformers", "openclip"), help="source kind (default: by SRC)"
    )
    parser.add_argument("--arch", help="export: transformers class to write (default: chosen by the model's heads)")
    parser.add_argument(
        "--act",
        choices=("quick_gelu", "gelu"),
        help="OpenCLIP without a config: activation (default quick_gelu, as OpenAI's); with one, its quick_gelu rules",
    )
    parser.add_argument(
        "--openclip-config",
        help="OpenCLIP: model config (open_clip_config.json or model_configs/NAME.json); default: the one in SRC",
    )
    parser.add_argument("--tokenizer", help="OpenCLIP: CLIP tokenizer folder (vocab.json + merges.txt) to store")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    parser.set_defaults(run=run)
