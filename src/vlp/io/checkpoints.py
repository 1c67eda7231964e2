"""Checkpoints that survive a crash at any instant, and finding the newest good one.

A checkpoint is a folder ``checkpoints/step_00001000/`` holding

- ``model.safetensors``: the model weights (full, unsharded), tied tensors stored once;
- ``ema.safetensors``: the engine's EMA weights, when EMA is on;
- ``state.pt``: optimizer, schedule, grad scaler, counters, per-rank RNG and
  data-loader positions and the recipe; tensors and plain data only, read with
  ``torch.load(weights_only=True)`` so nothing arbitrary is unpickled;
- ``manifest.json``: size and sha256 of every file above, written last.

It is written into a hidden temporary folder, every file fsync'ed, then renamed
into place (a rename is atomic), so a reader sees either a whole checkpoint or
none. A folder whose files do not match its manifest (a disk that lied, a
truncated copy) is treated as corrupt and skipped in favour of the one before.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from vlp.config import ConfigError
from vlp.io.saving import CheckpointError as ModelWeightsError
from vlp.io.saving import check_weights_file

FORMAT = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensors_to_safetensors(tensors: dict[str, torch.Tensor]) -> bytes:
    """Serialize a state dict; tensors that share storage (tied weights) are stored
    once and the other names recorded as aliases in the file's metadata."""
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in tensors.items():
        if tensor.numel() > 0:
            key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape)
            if key in seen:
                aliases[name] = seen[key]
                continue
            seen[key] = name
        stored[name] = tensor.detach().to("cpu").contiguous()
    return save(stored, metadata={"format": "pt", "aliases": json.dumps(aliases)})


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a file written by :func:`tensors_to_safetensors`, aliases restored."""
    from safetensors import safe_open

    try:
        check_weights_file(path)  # a truncated file gets a message that says so, naming the file
    except ModelWeightsError as err:
        raise CheckpointError(f"{err}") from err
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: cannot read safetensors file: {err}") from err
    for alias, source in json.loads(metadata.get("aliases", "{}")).items():
        tensors[alias] = tensors[source]
    return tensors


class CheckpointError(ConfigError):
    """A checkpoint or weights file that cannot be read; the ``vlp`` command reports it as bad input (exit 2)."""


class CheckpointManager:
    """Writes, lists, validates, loads and prunes the checkpoints under ``root``."""

    def __init__(self, root: str | Path, keep: int = 3) -> None:
        self.root = Path(root)
        self.keep = keep

    def path_for(self, step: int) -> Path:
        return self.root / f"step_{step:08d}"

    def list(self) -> list[tuple[int, Path]]:
        """Finished checkpoint folders (valid or not), newest first."""
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
        return sorted(found, reverse=True)

    def save(
        self,
        step: int,
        model: dict[str, torch.Tensor],
        state: dict[str, Any],
        ema: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write checkpoint ``step`` atomically and prune old ones; returns its folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path_for(step)
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        files = {"model.safetensors": tensors_to_safetensors(model)}
        if ema is not None:
            files["ema.safetensors"] = tensors_to_safetensors(ema)
        for name, data in files.items():
            _write_bytes(tmp / name, data)
        del files
        with open(tmp / "state.pt", "wb") as handle:
            torch.save({"format": FORMAT, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        entries = {}
        for child in sorted(tmp.iterdir()):
            entries[child.name] = {"size": child.stat().st_size, "sha256": _sha256(child)}
        manifest = {"format": FORMAT, "step": step, "files": entries}
        _write_bytes(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. a signal right after resuming)
            old = self.root / f".old-{final.name}-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(self.root)
        self.prune()
        return final

    def validate(self, path: Path) -> str | None:
        """Why checkpoint ``path`` is unusable, or None when its files match the manifest."""
        try:
            manifest = json.loads((path / "manifest.json").read_text())
            entries = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"manifest.json unreadable ({err})"
        if "model.safetensors" not in entries or "state.pt" not in entries:
            return "manifest.json lists no model.safetensors/state.pt"
        for name, entry in entries.items():
            file = path / name
            if not file.is_file():
                return f"{name} is missing"
            if file.stat().st_size != entry.get("size"):
                return f"{name} has {file.stat().st_size} bytes, manifest says {entry.get('size')}"
            if _sha256(file) != entry.get("sha256"):
                return f"{name} does not match its sha256 in manifest.json"
        return None

    def step_of(self, path: Path) -> int:
        """The step of checkpoint folder ``path`` (``step_00001000`` -> 1000)."""
        match = _STEP_DIR.match(Path(path).name)
        if match is None:
            raise CheckpointError(f"{path}: not a checkpoint folder (expected step_NNNNNNNN)")
        return int(match.group(1))

    def latest_valid(self, warn=print, before: int | None = None) -> Path | None:
        """The newest checkpoint (of a step below ``before``, if given) whose files match its
        manifest; corrupt ones are reported through ``warn`` and skipped."""
        for step, path in self.list():
            if before is not None and step >= before:
                continue
            reason = self.validate(path)
            if reason is None:
                return path
            warn(f"checkpoint {path} is corrupt ({reason}); trying the one before")
        return None

    def load(self, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor] | None]:
        """(model weights, state, EMA weights or None) of checkpoint ``path``, on the CPU."""
        model = load_safetensors(path / "model.safetensors")
        ema_path = path / "ema.safetensors"
        ema = load_safetensors(ema_path) if ema_path.exists() else None
        try:
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError...
            raise CheckpointError(f"{path / 'state.pt'}: cannot be read as a weights-only state file: {err}") from err
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"{path / 'state.pt'}: format {found!r}, expected {FORMAT}")
        return model, state, ema

    def prune(self) -> None:
        """Keep the newest ``keep`` checkpoints; drop leftovers of interrupted writes."""
        for _, path in self.list()[self.keep :]:
            shutil.rmtree(path, ignore_errors=True)
        mine = os.getpid()
        for child in self.root.iterdir():
            if child.name.startswith((".tmp-", ".old-")) and not child.name.endswith(f"-{mine}"):
                shutil.rmtree(child, ignore_errors=True)
