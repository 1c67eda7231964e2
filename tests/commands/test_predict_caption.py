"""vlp predict caption / vqa on a converted tiny BLIP: the same outputs as the task APIs called directly, bad
images skipped and counted, and a rerun that resumes to the file an uninterrupted run writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from predict_helpers import lines, run_predict

from vlp.io.folders import load_model
from vlp.io.predictions import meta_path
from vlp.tasks import captioning, vqa
from vlp.tasks.vqa import default_decode_options

DECODE = ("--max-new-tokens", "6", "--num-beams", "2")


def add_bad_images(folder: Path, good: Path) -> list[Path]:
    """A text file named .jpg (not_an_image) and a PNG cut in half (corrupt_image), sorted among the photos."""
    (folder / "photo1a.jpg").write_text("this is not a picture")
    data = good.read_bytes()
    (folder / "photo3a.png").write_bytes(data[: len(data) // 2])
    return [folder / "photo1a.jpg", folder / "photo3a.png"]


def test_caption_matches_the_api_and_skips_bad_images(blip_folders, photos, capsys):
    _, converted = blip_folders
    add_bad_images(photos[0].parent, photos[0])
    code, out, err = run_predict(capsys, "caption", converted, photos[0].parent, *DECODE, "--batch-size", "16")
    assert code == 0
    found = lines(out)
    loaded = load_model(converted)
    expected = captioning.caption(loaded.model, loaded.tokenizer, photos, "beam", max_new_tokens=6, num_beams=2)
    assert len(set(expected)) > 1  # the images are told apart, so a mix-up would show
    good = [r for r in found if "error" not in r]
    assert [(r["path"], r["caption"]) for r in good] == [(str(p), c) for p, c in zip(photos, expected)]
    bad = {Path(r["path"]).name: r["error"].split(":")[0] for r in found if "error" in r}
    assert bad == {"photo1a.jpg": "not_an_image", "photo3a.png": "corrupt_image"}
    assert [Path(r["path"]).name for r in found][:3] == ["photo0.png", "photo1.png", "photo1a.jpg"]  # input order
    assert "5 predicted, 2 skipped (corrupt_image=1, not_an_image=1)" in err


def test_a_rerun_resumes_to_the_uninterrupted_file(blip_folders, photos, tmp_path, capsys):
    _, converted = blip_folders
    add_bad_images(photos[0].parent, photos[0])
    whole, out = tmp_path / "whole.jsonl", tmp_path / "out.jsonl"
    args = ("caption", converted, photos[0].parent, *DECODE, "--batch-size", "3")
    assert run_predict(capsys, *args, "--out", whole)[0] == 0
    expected = whole.read_text()
    assert len(expected.splitlines()) == 7
    assert run_predict(capsys, *args, "--out", out)[0] == 0
    assert out.read_text() == expected
    # stopped mid-batch: the last three lines lost, the one before cut off mid-write
    kept = expected.splitlines(keepends=True)[:3]
    out.write_text("".join(kept) + expected.splitlines(keepends=True)[3][:10])
    code, _, err = run_predict(capsys, *args, "--out", out)
    assert code == 0 and "3 predicted, 1 skipped (corrupt_image=1), 3 already done" in err
    assert out.read_text() == expected
    code, _, err = run_predict(capsys, *args, "--out", out)  # nothing left to do
    assert code == 0 and out.read_text() == expected and "7 already done" in err


def test_never_appends_to_a_file_it_did_not_write(blip_folders, photos, tmp_path, capsys):
    _, converted = blip_folders
    mine = tmp_path / "notes.jsonl"
    mine.write_text('{"path": "x", "mine": true}\n')
    code, _, err = run_predict(capsys, "caption", converted, photos[0], *DECODE, "--out", mine)
    assert code == 2 and "was not written by vlp predict" in err and "--overwrite" in err
    assert mine.read_text() == '{"path": "x", "mine": true}\n'
    out = tmp_path / "captions.jsonl"
    assert run_predict(capsys, "caption", converted, photos[0], *DECODE, "--out", out)[0] == 0
    before = out.read_text()
    code, _, err = run_predict(
        capsys, "caption", converted, photos[0], *DECODE, "--prompt", "a photo of ", "--out", out
    )
    assert code == 2 and "(prompt: 'a picture of ' in the file, 'a photo of ' now)" in err and out.read_text() == before
    code, _, _ = run_predict(capsys, "caption", converted, photos[0], *DECODE, "--prompt", "a photo of ", "--out", out,
                             "--overwrite")  # fmt: skip
    assert code == 0 and len(lines(out.read_text())) == 1
    assert '"prompt": "a photo of "' in meta_path(out).read_text()


def test_vqa_answers_match_the_api(blip_folders, photos, capsys):
    _, converted = blip_folders
    question = "what color is the shape?"
    code, out, _ = run_predict(capsys, "vqa", converted, *photos[:3], "--question", question, "--max-new-tokens", "4")
    assert code == 0
    loaded = load_model(converted)
    options = default_decode_options()
    options.max_new_tokens = 4
    expected = vqa.predict(loaded.model, loaded.tokenizer, photos[:3], [question] * 3, method="generate",
                           options=options)  # fmt: skip
    assert [(r["path"], r["question"], r["answer"]) for r in lines(out)] == [
        (str(p), question, a) for p, a in zip(photos, expected)
    ]


@pytest.mark.parametrize(
    "argv, message",
    [(("zeroshot", "--labels", "a,b"), "has no dual-encoder side"), (("embed", "--out", "e"), "no dual-encoder"),
     (("ground", "--text", "x"), "no box head"), (("vqa", "--question", " "), "--question is empty")],
)  # fmt: skip
def test_a_model_that_cannot_do_the_task_is_one_clear_error(blip_folders, photos, capsys, tmp_path, argv, message):
    _, converted = blip_folders
    argv = [str(tmp_path / a) if a == "e" else a for a in argv]
    code, out, err = run_predict(capsys, argv[0], converted, photos[0], *argv[1:])
    assert code == 2 and message in err and out == ""
