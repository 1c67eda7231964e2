"""An image folder with one sub-folder per class (torchvision's ``ImageFolder``, clip_benchmark's layout).

Two layouts are read:

- one folder: ``ROOT/<class>/**/<image>``. Split ``all`` is every image; ``train`` and ``test``
  are a seeded split of each class's images (``test_fraction`` of them, at least one when the class
  has two or more, go to ``test``), so the same seed always gives the same split.
- split folders (ImageNet's layout): ``ROOT/<split>/<class>/**/<image>`` with ``<split>`` among
  ``train``, ``val`` (``valid``, ``validation``), ``test``. A split is its folder; ``test``
  without a ``test/`` folder is ``val/`` (ImageNet and most class-folder datasets label only
  train and val, and evaluate on val); ``all`` is every split folder.

Classes are the sorted names of the class folders (the union over split folders, so every split
numbers them alike), as ``ImageFolder`` sorts them; images are found recursively, by suffix.
Display names come from the folder names, or from a file: one name per line in sorted-folder order,
a JSON list in that order, or a JSON mapping ``folder -> name``.

Records: ``image`` (absolute path), ``image_id`` (path relative to ROOT), ``label`` (class index)
and ``class_name``. ``extras``: ``classes`` (display names by label), ``class_folders`` and
``split_source`` (a sentence saying which images the split holds).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlp.config import ConfigError
from vlp.data.sources.common import IMAGE_SUFFIXES, SourceIndex

SPLIT_FOLDERS = ("train", "val", "valid", "validation", "test")
SEEDED_SPLITS = ("all", "train", "test")


@dataclass
class FolderLayout:
    """What a class-folder root holds: its split folders (empty for one folder) and the class folders."""

    root: Path
    splits: dict[str, Path]  # split name -> folder holding the class folders; {} = one folder
    class_folders: list[str]  # sorted; label i = class_folders[i]

    def describe(self) -> str:
        if not self.splits:
            return f"one folder of {len(self.class_folders)} class folders"
        named = " and ".join(f"{name}/" for name in self.splits)
        return f"class folders under {named} ({len(self.class_folders)} classes)"


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_layout(root: str | Path) -> FolderLayout:
    """The layout of ``root``: split folders of class folders, or class folders directly."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"image_folder: {root} is not a folder")
    subs = _subfolders(root)
    if subs and all(p.name.lower() in SPLIT_FOLDERS for p in subs):
        splits = {p.name.lower(): p for p in subs}
        folders = sorted({c.name for split in splits.values() for c in _subfolders(split)})
        if not folders:
            raise ConfigError(f"image_folder: {root}: the split folders {', '.join(splits)} hold no class folders")
        return FolderLayout(root, splits, folders)
    if not subs:
        raise ConfigError(f"image_folder: {root}: no class sub-folders (expected ROOT/<class>/<image> files)")
    return FolderLayout(root, {}, [p.name for p in subs])


def _images_of(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, symlinks followed as ImageFolder does), sorted."""
    found = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(parent) / f for f in files if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES))
    return sorted(found)


def read_class_names(path: str | Path, class_folders: list[str]) -> list[str]:
    """Display names of ``class_folders`` from ``path``: text lines or a JSON list (in sorted-folder
    order), or a JSON mapping ``folder -> name``. A count or key that does not fit is a ConfigError."""
    path = Path(path).expanduser()
    where = f"class names {path}"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise ConfigError(f"{where}: file not found") from err
    except (IsADirectoryError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where}: expected a UTF-8 text or JSON file ({err})") from err
    if path.suffix.lower() == ".json":
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where}: not valid JSON ({err})") from err
        if isinstance(data, dict):
            missing = [f for f in class_folders if f not in data]
            unknown = sorted(set(data) - set(class_folders))
            if missing or unknown:
                raise ConfigError(
                    f"{where}: the mapping folder -> name must name every class folder and no other; "
                    f"missing: {missing[:5]}, not a class folder: {unknown[:5]}"
                )
            names = [data[f] for f in class_folders]
        elif isinstance(data, list):
            names = data
        else:
            raise ConfigError(f"{where}: expected a JSON list of names or a mapping folder -> name")
        if not all(isinstance(n, str) and n.strip() for n in names):
            raise ConfigError(f"{where}: every class name must be a non-empty string")
        names = [n.strip() for n in names]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != len(class_folders):
        raise ConfigError(
            f"{where}: {len(names)} names for {len(class_folders)} class folders "
            f"({', '.join(class_folders[:5])}{', ...' if len(class_folders) > 5 else ''}); give one name per "
            "folder in sorted-folder order, or a JSON mapping folder -> name"
        )
    return names


def seeded_test_part(count: int, fraction: float, seed: int, key: str) -> set[int]:
    """Indices (of ``count`` images of one class) in the test part: ``round(count * fraction)`` of them,
    at least one when ``count >= 2`` and ``fraction > 0``, never all; drawn by ``(seed, key)``."""
    take = round(count * fraction)
    if fraction > 0 and count >= 2:
        take = max(take, 1)
    take = min(take, count - 1) if count >= 2 else 0
    return set(random.Random(f"{seed}:{key}").sample(range(count), take))


def read_image_folder(
    root: Path,
    split: str,
    class_names: str | Path | None = None,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> SourceIndex:
    """One record per image of ``split`` (see the module docstring for the layouts and splits)."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"data.options.test_fraction: must lie in (0, 1), got {test_fraction}")
    layout = folder_layout(root)
    folders = layout.class_folders
    names = read_class_names(class_names, folders) if class_names else list(folders)
    position = {f: i for i, f in enumerate(folders)}
    chosen: list[tuple[Path, str | None]] = []  # (folder of class folders, seeded part or None = every image)
    if layout.splits:
        if split == "all":
            chosen = [(folder, None) for folder in layout.splits.values()]
            source = f"every image of {', '.join(f'{s}/' for s in layout.splits)}"
        elif split in layout.splits:
            chosen, source = [(layout.splits[split], None)], f"the {split}/ folder"
        elif split == "test" and (val := next((s for s in SPLIT_FOLDERS[1:4] if s in layout.splits), None)):
            chosen, source = [(layout.splits[val], None)], f"the {val}/ folder (there is no test/ folder)"
        else:
            raise ConfigError(
                f"image_folder {layout.root}: no split {split!r}; the split folders are "
                f"{', '.join(layout.splits)} (and 'all')"
            )
    else:
        if split not in SEEDED_SPLITS:
            raise ConfigError(
                f"image_folder {layout.root}: split {split!r} does not exist in one folder of class folders; "
                f"use all, or train / test (a seeded {test_fraction:.0%} test part of each class, "
                "data.options.test_fraction and split_seed), or put the images under train/ and val/ folders"
            )
        chosen = [(layout.root, None if split == "all" else split)]
        source = (
            "every image of the folder"
            if split == "all"
            else f"the seeded {split} part of one folder (test_fraction {test_fraction:g}, seed {seed})"
        )
    records: list[dict[str, Any]] = []
    for base, part in chosen:
        for folder in _subfolders(base):
            if folder.name not in position:
                continue
            images = _images_of(folder)
            if part is not None:
                test = seeded_test_part(len(images), test_fraction, seed, folder.name)
                images = [p for i, p in enumerate(images) if (i in test) == (part == "test")]
            label = position[folder.name]
            for path in images:
                records.append({"image": str(path), "image_id": path.relative_to(layout.root).as_posix(),
                                "label": label, "class_name": names[label]})  # fmt: skip
    index = SourceIndex(records)
    index.extras.update(classes=names, class_folders=list(folders), split_source=source, layout=layout.describe())
    return index


__all__ = ["FolderLayout", "folder_layout", "read_class_names", "read_image_folder", "seeded_test_part"]
