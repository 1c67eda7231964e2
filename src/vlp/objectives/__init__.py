"""Pretraining objectives: each ``forward(model_outputs, batch) -> (loss, logs)``.

A recipe lists them by name with their options::

    objectives: {itc: {weight: 1.0}, itm: {weight: 1.0, negatives: hard},
                 mlm: {weight: 1.0, strategy: whole_word, prob: 0.15}}

Each key names a member of the :class:`ObjectiveConfig` family. ``validate_objectives``
checks such a mapping (unknown objective or option -> ConfigError naming
``objectives.<name>.<key>``) and returns the typed configs, defaults filled in;
``build_objectives`` turns it into ``{name: (weight, module)}`` and
``Pretraining(model, objectives)`` sums them for the training engine.
"""

from __future__ import annotations

from vlp.objectives.base import Objective, ObjectiveConfig, logs_to_floats
from vlp.objectives.itc import ITC, ITCConfig
from vlp.objectives.itm import ITM, ITMConfig
from vlp.objectives.lm import LM, LMConfig
from vlp.objectives.mlm import MLM, MLMConfig
from vlp.objectives.momentum import MomentumModel
from vlp.objectives.pretraining import Pretraining
from vlp.objectives.region import MRC, MRFR, MRCConfig, MRFRConfig
from vlp.objectives.registry import build_objectives, objective_config, validate_objectives
from vlp.objectives.seq2seq import Seq2Seq, Seq2SeqConfig
from vlp.objectives.siglip import SigLIP, SigLIPConfig

__all__ = [
    "ITC",
    "ITM",
    "LM",
    "MLM",
    "MRC",
    "MRFR",
    "ITCConfig",
    "ITMConfig",
    "LMConfig",
    "MLMConfig",
    "MRCConfig",
    "MRFRConfig",
    "MomentumModel",
    "Objective",
    "ObjectiveConfig",
    "Pretraining",
    "Seq2Seq",
    "Seq2SeqConfig",
    "SigLIP",
    "SigLIPConfig",
    "build_objectives",
    "logs_to_floats",
    "objective_config",
    "validate_objectives",
]
