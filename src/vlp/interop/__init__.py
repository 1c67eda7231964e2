"""Weights from and to other libraries: transformers checkpoint folders and OpenCLIP state dicts.

- :func:`import_folder` / ``vlp convert SRC DST``: a transformers folder (CLIPModel, ViltModel and its
  VQA / retrieval / MLM heads, BlipForImageTextRetrieval, BlipForConditionalGeneration,
  LxmertModel, VisualBertModel) -> a vlp model folder with the tokenizer and image preprocessing;
- :func:`export_folder` / ``vlp convert --to transformers SRC DST``: back again;
- :func:`import_openclip` / ``vlp convert --from openclip``: an OpenCLIP (or OpenAI CLIP) state
  dict, ViT or ModifiedResNet image tower -> the ``clip`` / ``clip-resnet`` recipe;
- :func:`load_preprocess`: the image transform stored with a model.

Loading is strict: a missing or unexpected weight is a :class:`ConversionError` listing the names.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "ConversionError": "vlp.interop.common",
    "import_folder": "vlp.interop.hf",
    "export_folder": "vlp.interop.hf",
    "import_openclip": "vlp.interop.openclip",
    "load_preprocess": "vlp.interop.preprocess",
    "Preprocess": "vlp.interop.preprocess",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlp.interop' has no attribute {name!r}")


__all__ = list(_LAZY)
