"""The VQA answer vocabulary cached in data.root follows top_k, min_count and the annotation files."""

from __future__ import annotations

import json
import logging
import os

import pytest
from loaders_helpers import dump

from vlp.config import ConfigError, from_dict
from vlp.data.config import DataConfig
from vlp.data.loader import build_dataset

# multiple-choice answers of the training questions: yes x5, no x3, 2 x2, red x1
ANSWERS = ["yes"] * 5 + ["no"] * 3 + ["2"] * 2 + ["red"]


def _write(root, answers: list[str]) -> None:
    questions = [{"image_id": 1, "question": f"q{q}?", "question_id": q} for q in range(len(answers))]
    dump(root / "questions.json", {"data_subtype": "train", "questions": questions})
    annotations = [{"question_id": q, "image_id": 1, "multiple_choice_answer": a, "answers": [{"answer": a}] * 10}
                   for q, a in enumerate(answers)]  # fmt: skip
    dump(root / "annotations.json", {"annotations": annotations})


def _vocab(root, **options) -> list[str]:
    paths = {"questions": "questions.json", "annotations": "annotations.json"}
    data = {"type": "vqav2", "root": str(root), "image_size": 16, "options": options, "paths": paths}
    config = from_dict(DataConfig, data)
    return build_dataset(config, "train").processor.config.answer_vocab


def test_cached_vocabulary_is_rebuilt_when_what_it_came_from_changes(tmp_path) -> None:
    _write(tmp_path, ANSWERS)
    assert _vocab(tmp_path, top_k=3) == ["yes", "no", "2"]
    assert _vocab(tmp_path, top_k=2) == ["yes", "no"]  # the cache of top_k=3 no longer answers
    assert _vocab(tmp_path, top_k=5) == ["yes", "no", "2", "red"]
    assert _vocab(tmp_path, top_k=5, min_count=3) == ["yes", "no"]
    saved = json.loads((tmp_path / "answer_vocab.json").read_text())
    assert saved["answers"] == ["yes", "no"] and saved["built_from"]["min_count"] == 3
    assert saved["built_from"]["annotations"][0]["path"] == str((tmp_path / "annotations.json").resolve())
    # new annotations of the same size: the modification time tells them apart
    _write(tmp_path, ["red"] * 5 + ["no"] * 3 + ["2"] * 2 + ["yes"])
    os.utime(tmp_path / "annotations.json", ns=(1, 1))
    assert _vocab(tmp_path, top_k=5, min_count=3) == ["red", "no"]
    with pytest.raises(ConfigError, match="top_k and min_count must be >= 1"):
        _vocab(tmp_path, top_k=0)


def test_a_vocabulary_file_vlp_did_not_build_is_used_as_given(tmp_path, caplog) -> None:
    _write(tmp_path, ANSWERS)
    mine = tmp_path / "answer_vocab.json"
    mine.write_text('{"answers": ["no", "maybe"]}')
    with caplog.at_level(logging.WARNING, logger="vlp.data"):
        assert _vocab(tmp_path, top_k=3) == ["no", "maybe"]
    assert mine.read_text() == '{"answers": ["no", "maybe"]}'  # never overwritten
    assert "a file vlp did not build; data.options.top_k=3 does not apply" in caplog.text
