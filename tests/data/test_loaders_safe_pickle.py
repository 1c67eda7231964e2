"""RefCOCO's refs pickle is read by an unpickler that admits only plain data."""

from __future__ import annotations

import builtins
import copyreg
import pickle

import pytest

from vlp.data.safe_pickle import UnsafePickleError, safe_load, safe_loads


class _OpensAFile:
    """Unpickling this with the standard pickle creates ``path``: a stand-in for arbitrary code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def _short_binstring(text: bytes) -> bytes:
    return b"U" + bytes([len(text)]) + text


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, protocol) -> None:
    marker = tmp_path / f"pwned{protocol}"
    payload = pickle.dumps([{"ref_id": 1, "sentences": [_OpensAFile(str(marker))]}], protocol=protocol)
    path = tmp_path / "refs(unc).p"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=r"refs\(unc\)\.p.*refused to load (builtins|io)\.open"):
        safe_load(path)
    assert not marker.exists()
    # the payload is live: the ordinary unpickler does run it
    pickle.loads(payload)
    assert marker.exists()


def test_extension_codes_are_refused_even_when_cached(tmp_path) -> None:
    code = 0x7FFF_FFF0
    copyreg.add_extension("io", "open", code)
    try:
        payload = pickle.dumps(builtins.open, protocol=2)
        assert pickle.loads(payload) is builtins.open  # now cached: the C unpickler would skip find_class
        with pytest.raises(UnsafePickleError, match="extension code"):
            safe_loads(payload, "crafted.p")
    finally:
        copyreg.remove_extension("io", "open", code)
        copyreg.clear_extension_cache()


def test_plain_refs_load(tmp_path) -> None:
    refs = [
        {"ref_id": 0, "ann_id": 5, "image_id": 9, "split": "testA", "category_id": 1, "sent_ids": [0, 1],
         "file_name": "COCO_train2014_000000000009_5.jpg", "box": (1.5, 2.0),
         "sentences": [{"raw": "Left man", "sent": "left man", "tokens": ["left", "man"], "sent_id": 0}]},
    ]  # fmt: skip
    path = tmp_path / "refs.p"
    path.write_bytes(pickle.dumps(refs, protocol=2))
    assert safe_load(path) == refs


def test_python2_byte_strings_decode_as_utf8_then_latin1() -> None:
    # what Python 2 writes for {"sent": "café on left", "ref_id": 7} inside a list (SHORT_BINSTRING = py2 str)
    payload = (
        b"\x80\x02]q\x00}q\x01(" + _short_binstring(b"sent") + _short_binstring("café on left".encode())
        + _short_binstring(b"ref_id") + b"K\x07ua."
    )  # fmt: skip
    assert safe_loads(payload) == [{"sent": "café on left", "ref_id": 7}]
    latin = b"\x80\x02]q\x00" + _short_binstring(b"caf\xe9") + b"a."
    assert safe_loads(latin) == ["café"]


def test_truncated_and_empty_pickles_name_the_file(tmp_path) -> None:
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"a": 1}] * 10, protocol=2)[:-7])
    with pytest.raises(pickle.UnpicklingError, match=r"refs\(unc\)\.p: not a readable pickle"):
        safe_load(path)
    path.write_bytes(b"")
    with pytest.raises(pickle.UnpicklingError, match="empty file"):
        safe_load(path)


@pytest.mark.parametrize("protocol", [3, 4])  # what numpy 1's and numpy 2's np.save write
def test_array_unpickler_reads_numpy_arrays_of_either_numpy_and_refuses_the_rest(tmp_path, protocol) -> None:
    import numpy as np

    from vlp.data.safe_pickle import safe_loads_arrays

    value = np.array({"ids": np.array([3, 1], np.int64), "conf": np.float32(0.5), "n": 2}, dtype=object)
    data = pickle.dumps(value, protocol=protocol)
    with pytest.raises(UnsafePickleError, match="numpy"):
        safe_loads(data)  # plain data only: arrays are not
    variants = [data]
    if protocol == 3:  # numpy 1 wrote these, naming numpy.core (GLOBAL opcodes are text: the rename is exact)
        variants.append(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    for variant in variants:
        loaded = safe_loads_arrays(variant).item()
        assert loaded["ids"].tolist() == [3, 1] and loaded["ids"].dtype == np.int64
        assert loaded["conf"] == np.float32(0.5) and loaded["n"] == 2
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafePickleError, match="refused to load"):
        safe_loads_arrays(pickle.dumps(np.array([_OpensAFile(str(marker))], dtype=object), protocol=protocol))
    assert not marker.exists()
