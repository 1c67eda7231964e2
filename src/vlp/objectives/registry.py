"""Objectives by name: validate a recipe's ``objectives`` mapping and build the modules it names.

Each key names a member of the :class:`~vlp.objectives.base.ObjectiveConfig` family (registered
with :func:`vlp.config.part` next to its module). Importing this module registers every built-in
objective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from vlp.config import ConfigError, build
from vlp.objectives.base import Objective, ObjectiveConfig, ObjectiveOptions
from vlp.objectives.itc import ITCConfig  # noqa: F401  registers itc
from vlp.objectives.itm import ITM
from vlp.objectives.lm import LMConfig  # noqa: F401  registers lm
from vlp.objectives.mlm import MLMConfig
from vlp.objectives.region import MRCConfig, MRFRConfig  # noqa: F401  register mrc, mrfr
from vlp.objectives.siglip import SigLIPConfig  # noqa: F401  registers siglip


def objective_config(name: str, options: Mapping[str, Any] | ObjectiveOptions | None) -> ObjectiveOptions:
    """The validated config object of objective ``name`` from its recipe options."""
    return ObjectiveConfig.parse(name, options, "objectives")  # type: ignore[return-value]


def validate_objectives(objectives: Mapping[str, Any] | None) -> dict[str, ObjectiveOptions]:
    """Every objective's typed options from ``{name: options}`` (plain mappings or configs); errors name the key.

    The configs save every option (:func:`vlp.config.to_dict`) and read like those plain mappings.
    """
    return ObjectiveConfig.parse_all({} if objectives is None else objectives, "objectives")


def _tokenizer_ids(tokenizer: Any) -> dict[str, Any]:
    named = [getattr(tokenizer, f"{k}_id", None) for k in ("pad", "cls", "sep", "mask", "unk")]
    # [UNK] counts as special: predicting it teaches nothing, and it is never a useful random replacement
    specials = {int(i) for i in [*named, *getattr(tokenizer, "special_ids", ())] if i is not None}
    return {"mask_id": int(tokenizer.mask_id), "vocab_size": int(tokenizer.vocab_size), "special_ids": sorted(specials)}


def build_objectives(objectives: Mapping[str, Any], *, tokenizer: Any = None) -> dict[str, tuple[float, Objective]]:
    """name -> ``(weight, module)`` from a recipe's ``objectives`` (options dicts or config objects).

    ``tokenizer`` (anything with ``mask_id``, ``vocab_size``, ``pad_id``, ``cls_id``,
    ``sep_id``) supplies MLM's token ids where the recipe does not set them, and resolves ITM's
    ``swap_words`` to token ids.
    """
    built: dict[str, tuple[float, Objective]] = {}
    for name, options in (objectives or {}).items():
        cfg = objective_config(str(name), options)
        if isinstance(cfg, MLMConfig) and tokenizer is not None:
            ids = _tokenizer_ids(tokenizer)
            cfg = dataclasses.replace(
                cfg,
                mask_id=cfg.mask_id if cfg.mask_id is not None else ids["mask_id"],
                vocab_size=cfg.vocab_size if cfg.vocab_size is not None else ids["vocab_size"],
                special_ids=cfg.special_ids or ids["special_ids"],
            )
        module = build(cfg)
        if isinstance(module, ITM) and cfg.swap_words:
            if tokenizer is None:
                raise ConfigError(
                    "objectives.itm.swap_words: resolving the swap words to token ids needs the tokenizer; "
                    "pass build_objectives(..., tokenizer=tok)"
                )
            module.resolve_swaps(tokenizer)
        built[str(name)] = (cfg.weight, module)
    return built
