"""ShapesWorld: a procedurally rendered world of shapes with exact ground truth for every task.

Scenes hold 1..``max_objects`` non-overlapping objects (6 shapes x 7 colours x 3 sizes)
on light or dark, solid or gradient, optionally noisy backgrounds, rendered
anti-aliased by 4x supersampling. Every image comes with captions, VQA questions
and answers, referring expressions, boxes, categories and object tags, all true
by construction. A compositional hold-out split contains (shape, colour) pairs
that never occur in train / val / test.

``vlp data synth --out DIR --images N --size S --seed K`` (or :func:`generate`)
writes only real datasets' formats under DIR:

- ``images/{split}/{image_id:07d}.png``: RGB PNG; splits train, val, test, holdout
- ``annotations/dataset_shapes.json``: Karpathy-split captions (``dataset_coco.json`` layout)
- ``annotations/captions_{split}.json``: ALBEF/BLIP caption lists
- ``annotations/instances_{split}.json``: COCO instances (``file_name`` relative to
  ``images/{split}``); category = shape, ``attributes`` = colour and size
- ``annotations/v2_OpenEnded_shapes_{split}_questions.json`` and
  ``annotations/v2_shapes_{split}_annotations.json``: VQAv2 layout, 10 answers each
- ``annotations/refs(unc).p`` + ``annotations/instances.json``: RefCOCO layout; the
  instances file covers all images, ``file_name`` relative to ``images/``
- ``shards/{split}-{shard:05d}.tar``: WebDataset shards in the img2dataset layout
- ``regions/{image_id:07d}.npz``: oracle-detector region features (see ``regions``)
- ``manifest_{split}.jsonl``: ``{"image", "captions", "image_id", "tags"}`` per line
- ``meta.json``: version, seed, size, counts, vocabulary, held-out pairs, categories

For on-the-fly use: ``sample_scene(rng)`` draws a :class:`Scene`, ``render_scene(scene,
size)`` renders it, and ``scene_of(meta, image_id)`` re-creates any written image's scene.
This package needs only numpy and Pillow at run time.
"""

from vlp.data.shapesworld.generate import FORMATS, generate, make_scene, scene_of, split_counts
from vlp.data.shapesworld.language import Facts, make_captions, make_refs, tokenize
from vlp.data.shapesworld.questions import FAMILIES, QA, make_questions
from vlp.data.shapesworld.regions import FEATURE_DIM, region_arrays
from vlp.data.shapesworld.render import Rendered, render_layers, render_scene
from vlp.data.shapesworld.scene import (
    Background,
    Scene,
    SceneObject,
    choose_holdout_pairs,
    position_holds,
    relation_holds,
    sample_scene,
)
from vlp.data.shapesworld.vocab import COLORS, POSITIONS, RELATIONS, SHAPES, SIZES

__all__ = [
    "COLORS",
    "FAMILIES",
    "FEATURE_DIM",
    "FORMATS",
    "POSITIONS",
    "QA",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "Background",
    "Facts",
    "Rendered",
    "Scene",
    "SceneObject",
    "choose_holdout_pairs",
    "generate",
    "make_captions",
    "make_questions",
    "make_refs",
    "make_scene",
    "position_holds",
    "region_arrays",
    "relation_holds",
    "render_layers",
    "render_scene",
    "sample_scene",
    "scene_of",
    "split_counts",
    "tokenize",
]
