"""Recognise what a dataset folder holds, so that ``--data FOLDER`` needs no ``--format``.

:func:`detect_data` looks at file names (and the first bytes of JSON files whose name does not
say what they are) in the folder, its ``annotations/`` sub-folder and its ``shards/`` sub-folder,
never reading a whole file: a Karpathy ``dataset_*.json``, VQAv2 question / annotation files,
``refs(*).p`` + ``instances.json``, COCO ``instances_*.json``, ALBEF/BLIP caption lists,
WebDataset ``.tar`` shards, JSONL / CSV manifests, a ShapesWorld folder (``meta.json`` written by
``vlp data synth``), and an image folder with one sub-folder per class (directly, or under split
folders ``train/``, ``val/``, ``test/`` as ImageNet lays it out). A file name that contains
a split (``train``, ``val2014``, ...) becomes a ``{split}`` template, so every split is found.

The caller names the loader types it can read (a task's ``wants``); exactly one match is used
and said, none or several is a :class:`~vlp.config.ConfigError` that lists what was found.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlp.config import ConfigError
from vlp.data.sources.common import IMAGE_SUFFIXES
from vlp.data.sources.image_folder import SPLIT_FOLDERS  # ImageNet's layout: <split>/<class>/<image>

SPLITS = ("train", "restval", "val", "minival", "test", "testdev", "dev", "holdout")
_SPLIT_WORD = re.compile(r"(?<![a-z])(" + "|".join(sorted(SPLITS, key=len, reverse=True)) + r")(?![a-z])")
PEEK_BYTES = 4096
# What a task reads, by kind (named as the ShapesWorld format of that kind), and the loader types that
# provide each kind (a task names its kind).
DATA_KINDS: dict[str, tuple[str, ...]] = {
    "captions": ("albef", "karpathy", "manifest", "webdataset"),
    "vqa": ("vqav2",),
    "refcoco": ("refcoco",),
    "instances": ("coco_instances", "image_folder"),  # zero-shot and probe read class folders too
}


@dataclass
class Detected:
    """One way to read the folder: a ``data`` section (``type``, ``root``, ``paths``, ``options``) and why."""

    type: str
    root: str
    paths: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)

    def data_section(self) -> dict[str, Any]:
        return {"type": self.type, "root": self.root, "paths": dict(self.paths), "options": dict(self.options)}

    def describe(self) -> str:
        shown = ", ".join(self.evidence[:3]) + (f" (+{len(self.evidence) - 3} more)" if len(self.evidence) > 3 else "")
        return f"{self.type} ({shown})"


def split_template(name: str) -> str | None:
    """``name`` with its split word replaced by ``{split}`` (``captions_val.json`` -> ``captions_{split}.json``)."""
    match = _SPLIT_WORD.search(name.lower())
    if match is None:
        return None
    return name[: match.start()] + "{split}" + name[match.end() :]


def _peek(path: Path) -> str:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            return handle.read(PEEK_BYTES)
    except OSError:
        return ""


def _templated(files: list[Path], root: Path) -> dict[str, list[str]]:
    """Relative path template -> the files it covers (a file without a split word is its own template)."""
    groups: dict[str, list[str]] = {}
    for path in sorted(files):
        rel = path.relative_to(root).as_posix()
        template = split_template(path.name)
        key = (path.parent.relative_to(root) / template).as_posix() if template else rel
        groups.setdefault(key, []).append(rel)
    return groups


def _is_image_folder(folder: Path) -> bool:
    """True when an image file lies in ``folder`` or below it (ImageFolder reads class folders recursively);
    the walk stops at the first image."""
    for _, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if any(f.lower().endswith(IMAGE_SUFFIXES) for f in files if not f.startswith(".")):  # what the loader reads
            return True
    return False


def _class_folders(root: Path) -> list[Path]:
    subfolders = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    classes = [p for p in subfolders if _is_image_folder(p)]
    return classes if len(classes) >= 2 and len(classes) == len(subfolders) else []


def find_candidates(root: str | Path) -> list[Detected]:
    """Every reading of ``root`` that its files support (possibly several, possibly none)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"--data: {root} is not a folder")
    meta = root / "meta.json"
    if meta.is_file() and '"shapesworld"' in _peek(meta):
        return [Detected("shapesworld", str(root), evidence=["meta.json (vlp data synth)"])]
    folders = [root] + [root / sub for sub in ("annotations", "shards") if (root / sub).is_dir()]
    files = [p for folder in folders for p in sorted(folder.iterdir()) if p.is_file()]
    found: list[Detected] = []

    def add(kind: str, key: str, template: str, evidence: list[str], **extra: Any) -> None:
        found.append(Detected(kind, str(root), {key: template, **extra}, {}, evidence))

    jsons = [p for p in files if p.suffix == ".json"]
    for template, covered in _templated([p for p in jsons if p.name.startswith("dataset_")], root).items():
        add("karpathy", "annotations", template, covered)
    questions = [p for p in jsons if "questions" in p.name]
    for template, covered in _templated(questions, root).items():
        answers = template.replace("OpenEnded_", "").replace("_questions", "_annotations")
        extra = {"annotations": answers} if any((root / a).exists() for a in _expand(answers)) else {}
        if extra and (root / answers.replace("{split}", "train")).exists():  # the answer vocabulary's source
            extra["train_annotations"] = answers.replace("{split}", "train")
        add("vqav2", "questions", template, covered, **extra)
    refs = [p for p in files if p.name.startswith("refs(") and p.suffix == ".p"]
    for ref in refs:
        instances = ref.parent / "instances.json"
        if instances.is_file():
            rel = ref.relative_to(root).as_posix()
            add("refcoco", "refs", rel, [rel, instances.relative_to(root).as_posix()],
                instances=instances.relative_to(root).as_posix())  # fmt: skip
    instance_files = [p for p in jsons if p.name.startswith("instances_")]
    for template, covered in _templated(instance_files, root).items():
        add("coco_instances", "instances", template, covered)
    known = {
        *questions,
        *instance_files,
        *(p for p in jsons if p.name.startswith("dataset_") or "annotations" in p.name),
    }
    caption_lists = [
        p for p in jsons if p not in known and re.match(r"\s*\[\s*\{", head := _peek(p)) and '"caption' in head
    ]
    for template, covered in _templated(caption_lists, root).items():
        add("albef", "annotations", template, covered)
    manifests = [p for p in files if p.suffix in (".jsonl", ".csv", ".tsv")]
    for template, covered in _templated(manifests, root).items():
        add("manifest", "manifest", template, covered)
    shards = [p for p in files if p.suffix == ".tar"]
    for template, covered in _templated(shards, root).items():
        pattern = re.sub(r"\d+(?=\.tar$)", "*", template) if "{split}" in template else template
        if not any(d.type == "webdataset" and d.paths["shards"] == pattern for d in found):
            add("webdataset", "shards", pattern, covered)
    split_classes = _split_class_folders(root)
    classes = [] if split_classes else _class_folders(root)  # train/ val/ of class folders are no classes
    if classes:
        names = [p.name for p in classes]
        found.append(
            Detected("image_folder", str(root), {}, {}, [f"{len(names)} class folders: {', '.join(names[:5])}"])
        )
    if split_classes:
        names = sorted({p.name for folders in split_classes.values() for p in folders})
        splits = ", ".join(f"{s}/" for s in split_classes)
        evidence = [f"{splits} of {len(names)} class folders: {', '.join(names[:5])}"]
        found.append(Detected("image_folder", str(root), {}, {}, evidence))
    return found


def _split_class_folders(root: Path) -> dict[str, list[Path]]:
    """ImageNet's layout: every sub-folder is a split (train/, val/, ...) of class folders; else {}."""
    subfolders = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if not subfolders or not all(p.name.lower() in SPLIT_FOLDERS for p in subfolders):
        return {}
    found = {p.name.lower(): _class_folders(p) for p in subfolders}
    return found if all(found.values()) else {}


def _expand(template: str) -> list[str]:
    return [template.replace("{split}", split) for split in SPLITS] if "{split}" in template else [template]


def detect_data(root: str | Path, wants: tuple[str, ...] | None = None) -> Detected:
    """The one reading of ``root`` among the loader types in ``wants`` (None = any type).

    A ShapesWorld folder is always taken as ``shapesworld`` (it holds every format at once).
    Raises :class:`ConfigError` naming the folder and what was found when nothing or more than
    one reading fits, with the ``--format`` to choose one.
    """
    candidates = find_candidates(root)
    if candidates and candidates[0].type == "shapesworld":
        return candidates[0]
    fitting = [c for c in candidates if wants is None or c.type in wants]
    if len(fitting) == 1:
        return fitting[0]
    seen = "; ".join(c.describe() for c in candidates) or "no dataset file this version of vlp recognises"
    wanted = f" of the kinds this command reads ({', '.join(wants)})" if wants else ""
    if not fitting:
        raise ConfigError(
            f"--data: {root}: found nothing{wanted}; found: {seen}. Name the files with --format TYPE and "
            "--set data.paths.KEY=FILE, or pass a YAML file with a data: section"
        )
    raise ConfigError(
        f"--data: {root}: found several readings{wanted}: {'; '.join(c.describe() for c in fitting)}; "
        "choose one with --format TYPE (and --set data.paths.KEY=FILE for the files)"
    )


__all__ = ["DATA_KINDS", "Detected", "detect_data", "find_candidates", "split_template"]
