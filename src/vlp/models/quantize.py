"""Dynamic int8 quantization of a model's linear layers: an explicit, approximate option for CPU inference.

Every ``nn.Linear`` (attention projections, MLPs, the dual-encoder projections, heads) becomes torch's
dynamically quantized linear layer: its weights are stored as int8 with one scale per output channel, and
each call quantizes its input to int8 with a scale measured on that input, multiplies in int8 (fbgemm /
oneDNN kernels) and returns float32. Embeddings, convolutions and LayerNorms stay float32. The result is
not exact: embeddings move by about 1e-2 in cosine (``benchmarks/bench_clip_infer.py`` prints the change
of zero-shot accuracy and retrieval R@1 it causes); everything exact in vlp stays the default.

``quantize_linear_int8(model)`` returns a quantized copy in eval mode; the model it was given is untouched.
It runs on the CPU only and has no gradients: it is for encoding, retrieval and zero-shot evaluation.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.ao.nn.quantized import Linear as Int8Linear
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

from vlp.config import ConfigError


def quantize_linear_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) whose ``nn.Linear`` layers are dynamically quantized to int8 (CPU only)."""
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ValueError(f"int8 quantization runs on the CPU; the model's parameters are on {sorted(devices)}")
    engines = torch.backends.quantized.supported_engines
    if not any(engine in engines for engine in ("x86", "fbgemm", "onednn", "qnnpack")):
        raise RuntimeError(f"this torch build has no int8 CPU kernels (quantized engines: {engines})")
    quantized = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        # torch marks its eager-mode quantization API as deprecated (in favour of torchao) but ships and runs it
        warnings.simplefilter("ignore")
        quantize_dynamic(quantized, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return quantized


def int8_model(model: nn.Module, device: object) -> nn.Module:
    """``quantize_linear_int8(model)`` for an evaluation on ``device`` (``--int8``): the CPU only."""
    if torch.device(device).type != "cpu":
        raise ConfigError(
            f"--int8: int8 quantization runs on the CPU, the evaluation is on {device}; pass --device cpu"
        )
    return quantize_linear_int8(model)


def count_int8_linears(model: nn.Module) -> int:
    """How many linear layers of ``model`` run in int8 (0 for a model that was not quantized)."""
    return sum(1 for m in model.modules() if isinstance(m, Int8Linear))  # the dynamic one is a subclass


__all__ = ["count_int8_linears", "int8_model", "quantize_linear_int8"]
