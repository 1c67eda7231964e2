"""Read pickles that can only hold plain data (RefCOCO's ``refs(unc).p``).

A pickle runs code when it names a callable (``os.system``, ``builtins.eval``,
any class) through the GLOBAL / STACK_GLOBAL / INST / OBJ / EXT opcodes and then
calls it with REDUCE / BUILD / NEWOBJ. Every one of those names is resolved by
``Unpickler.find_class`` (the C unpickler calls it for extension codes too),
so an unpickler whose ``find_class`` refuses every name can only build what the
pickle machine makes natively: dicts, lists, tuples, sets, str, bytes, int,
float, bool and None. Persistent ids are refused by the base class already.
One gap remains: the C unpickler answers an EXT opcode from
``copyreg._extension_cache`` without asking ``find_class`` when that code was
loaded before, so when any extension code is registered in this process the
opcodes are scanned first and EXT opcodes refused.

RefCOCO's refs were written by Python 2 (protocol 2): its ``str`` values arrive
as byte strings, decoded here as UTF-8 (Latin-1 when a value is not UTF-8, so a
stray byte never makes the whole file unreadable).

:func:`safe_loads_arrays` admits, besides plain data, the four names numpy's own
array pickles use (``ndarray``, ``dtype``, ``multiarray._reconstruct`` and
``multiarray.scalar``, under numpy 1's and numpy 2's module names): enough for
the ``info`` dict of numbers and numeric arrays that bottom-up-attention
extraction scripts store in their ``.npz`` files, and nothing that runs code:
``_reconstruct`` only makes an empty ``ndarray``, whose state is plain data again.
"""

from __future__ import annotations

import copyreg
import functools
import io
import pickle
import pickletools
from pathlib import Path
from typing import Any, BinaryIO


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a Python object (a function or class) and was refused."""


class PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that admits only plain containers, strings and numbers."""

    def __init__(self, file: BinaryIO, source: str = "<pickle>", encoding: str = "utf-8") -> None:
        super().__init__(file, encoding=encoding, errors="strict")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(
            f"{self.source}: refused to load {module}.{name}: only plain data (dict, list, tuple, str, bytes, "
            "numbers, bool, None) may be unpickled here, and this file names a Python object"
        )


@functools.cache  # built once, not at every global a pickle names
def _numpy_names() -> dict[tuple[str, str], Any]:
    import numpy as np

    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # numpy 1
        from numpy.core import multiarray  # type: ignore[no-redef]
    names: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # whichever numpy wrote the file
        names[(module, "_reconstruct")] = multiarray._reconstruct
        names[(module, "scalar")] = multiarray.scalar
    return names


class ArrayDataUnpickler(PlainDataUnpickler):
    """Plain data plus numpy arrays and scalars (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        found = _numpy_names().get((module, name))
        if found is None:
            return super().find_class(module, name)
        return found


def _refuse_extensions(data: bytes, source: str) -> None:
    ops = pickletools.genops(data)
    while True:
        try:
            opcode, arg, _ = next(ops)
        except StopIteration:
            return
        except (ValueError, pickle.UnpicklingError):
            return  # malformed opcodes: the unpickler reports them
        if opcode.name.startswith("EXT"):
            raise UnsafePickleError(f"{source}: refused extension code {arg}: only plain data may be unpickled")


def safe_loads(data: bytes, source: str = "<pickle>") -> Any:
    """Unpickle ``data`` (bytes) admitting only plain data; see the module docstring."""
    return _loads(data, source, PlainDataUnpickler, "utf-8")


def safe_loads_arrays(data: bytes, source: str = "<pickle>") -> Any:
    """Unpickle ``data`` admitting plain data and numpy arrays (see the module docstring)."""
    # Latin-1, as numpy.load(encoding="latin1"): a Python 2 pickle holds an array's raw bytes as a str
    return _loads(data, source, ArrayDataUnpickler, "latin-1")


def _loads(data: bytes, source: str, unpickler: type[PlainDataUnpickler], encoding: str) -> Any:
    if not data:
        raise pickle.UnpicklingError(f"{source}: empty file, expected a pickle")
    if copyreg._inverted_registry:  # type: ignore[attr-defined]  # extension codes exist in this process
        _refuse_extensions(data, source)
    try:
        return unpickler(io.BytesIO(data), source, encoding).load()
    except UnicodeDecodeError:
        # a Python 2 byte string that is not UTF-8: Latin-1 maps every byte, so it cannot fail
        return unpickler(io.BytesIO(data), source, encoding="latin-1").load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError, KeyError, TypeError, AttributeError,
            MemoryError) as err:  # fmt: skip
        raise pickle.UnpicklingError(f"{source}: not a readable pickle ({type(err).__name__}: {err})") from err


def safe_load(path: str | Path) -> Any:
    """Read a pickle file admitting only plain data; errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: file not found") from err
    return safe_loads(data, str(path))
