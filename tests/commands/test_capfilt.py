"""``vlp data capfilt`` (BLIP's CapFilt) on converted tiny BLIP models: the filter's decisions are the ITM
probabilities transformers computes for those pairs against the threshold, nucleus captions are reproducible
for a seed, a stopped run resumes to the uninterrupted set, and both output formats load through vlp's loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlp.cli import main
from vlp.config import ConfigError, from_dict
from vlp.data import build_dataset
from vlp.data.config import DataConfig
from vlp.data.detect import detect_data
from vlp.data.registry import resolve_context
from vlp.data.shapesworld import generate
from vlp.data.sources.webdataset import ShardReader
from vlp.io.folders import load_any
from vlp.tasks import captioning
from vlp.tasks.capfilt import CapFiltOptions, batch_seed, image_bytes, kept_texts, read_web_images, run_capfilt

transformers = pytest.importorskip("transformers")

CAPTIONS = ["a red circle", "two blue squares", "a green triangle on the left", "the large yellow square",
            "a small blue circle", "three red triangles"]  # fmt: skip


@pytest.fixture(scope="module")
def itm_folders(tmp_path_factory) -> tuple[Path, Path]:
    """``(transformers folder, converted vlp folder)`` of a tiny random BlipForImageTextRetrieval."""
    from interop_helpers import perturb, write_bert_vocab

    from vlp.interop import import_folder

    root = tmp_path_factory.mktemp("blip_itm")
    text = dict(vocab_size=40, hidden_size=32, encoder_hidden_size=24, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=32, bos_token_id=2, pad_token_id=0,
                sep_token_id=3)  # fmt: skip
    vision = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)  # fmt: skip
    torch.manual_seed(1)
    config = transformers.BlipConfig(text_config=text, vision_config=vision, image_text_hidden_size=16)
    model = perturb(transformers.BlipForImageTextRetrieval(config), seed=1, scale=0.5)
    model.save_pretrained(root / "hf")
    write_bert_vocab(root / "hf")
    transformers.BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "hf")
    return root / "hf", import_folder(root / "hf", root / "vlp")


@pytest.fixture
def web(photos, tmp_path) -> Path:
    """An ALBEF caption list over the photos: two captions per image, one of them another image's."""
    entries = []
    for i, photo in enumerate(photos):
        entries.append({"image": str(photo), "caption": CAPTIONS[i], "image_id": f"img{i}"})
        entries.append({"image": str(photo), "caption": CAPTIONS[(i + 3) % len(CAPTIONS)], "image_id": f"img{i}"})
    folder = tmp_path / "web"
    folder.mkdir()
    (folder / "web_train.json").write_text(json.dumps(entries))
    return folder


def capfilt(capsys, captioner: Path, filt: Path, data: Path, out: Path, *extra: object) -> tuple[int, str]:
    capsys.readouterr()
    args = ["data", "capfilt", "--captioner", captioner, "--filter", filt, "--data", data, "--out", out,
            "--max-new-tokens", "6", "--batch-size", "2", *extra]  # fmt: skip
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def reference_probabilities(hf: Path, records: list[dict]) -> list[float]:
    """p(match) of every (image, text) of ``records`` by transformers' BLIP ITM head, one pair at a time."""
    model = transformers.BlipForImageTextRetrieval.from_pretrained(hf).eval()
    processor = transformers.BlipProcessor.from_pretrained(hf)
    out = []
    with torch.no_grad():
        for record in records:
            image = Image.open(record["key"]).convert("RGB")
            for text in record["texts"]:
                inputs = processor(images=image, text=text["text"], return_tensors="pt")
                logits = model(**inputs, use_itm_head=True).itm_score
                out.append(float(logits.softmax(dim=-1)[0, 1]))
    return out


def test_filter_decisions_are_transformers_itm_probabilities_against_the_threshold(
    blip_folders, itm_folders, web, tmp_path, capsys
):
    _, captioner = blip_folders
    hf, filt = itm_folders
    code, err = capfilt(capsys, captioner, filt, web, tmp_path / "probe", "--samples-per-image", "2")
    assert code == 0, err
    records = json.loads((tmp_path / "probe" / "decisions_train.json").read_text())["images"]
    expected = reference_probabilities(hf, records)
    found = [t["p_match"] for r in records for t in r["texts"]]
    assert len(found) == 5 * (2 + 2)  # two web captions and two synthetic ones per image
    assert found == pytest.approx(expected, abs=1e-4)
    # a threshold between the probabilities: some texts kept, some dropped, exactly as the reference says
    ranked, middle = sorted(expected), len(expected) // 2
    threshold = (ranked[middle - 1] + ranked[middle]) / 2
    assert ranked[middle] - ranked[middle - 1] > 1e-3  # far from both neighbours, beyond the 1e-4 tolerance
    code, err = capfilt(capsys, captioner, filt, web, tmp_path / "out", "--samples-per-image", "2", "--threshold",
                        threshold)  # fmt: skip
    assert code == 0, err
    records = json.loads((tmp_path / "out" / "decisions_train.json").read_text())["images"]
    assert [t["kept"] for r in records for t in r["texts"]] == [p > threshold for p in expected]
    assert 0 < sum(p > threshold for p in expected) < len(expected)
    # the written set is the union of the kept texts, each once, read back through detect + the ALBEF loader
    found = detect_data(tmp_path / "out")
    assert found.type == "albef"
    spec, ctx = resolve_context(from_dict(DataConfig, found.data_section()), "train", train=True)
    pairs = [(Path(r["image"]).name, r["caption"]) for r in spec.index(ctx).records]
    kept = [(Path(r["key"]).name, t["text"]) for r in records for t in kept_texts(r)]
    assert sorted(pairs) == sorted(kept) and len(set(kept)) == len(kept)


def test_synthetic_captions_are_seeded_nucleus_samples(blip_folders, itm_folders, web, tmp_path, capsys):
    _, captioner = blip_folders
    _, filt = itm_folders
    for name in ("a", "b"):
        code, err = capfilt(capsys, captioner, filt, web, tmp_path / name, "--seed", "7")
        assert code == 0, err
    a, b = (json.loads((tmp_path / n / "decisions_train.json").read_text())["images"] for n in ("a", "b"))
    assert a == b
    synthetic = [[t["text"] for t in r["texts"] if t["source"] == "synthetic"] for r in a]
    # batch b of 2 images is sampled with seed batch_seed(7, b, 0): the captioning API gives the same texts
    loaded = load_any(captioner)
    photos = [Path(r["key"]) for r in a]
    for b in range(3):
        expected = captioning.caption(loaded.model, loaded.tokenizer, photos[2 * b : 2 * b + 2], "nucleus",
                                      prompt="a picture of ", max_new_tokens=6, top_p=0.9,
                                      seed=batch_seed(7, b, 0))  # fmt: skip
        assert [s[0] for s in synthetic[2 * b : 2 * b + 2]] == expected
    code, err = capfilt(capsys, captioner, filt, web, tmp_path / "c", "--seed", "8")
    other = json.loads((tmp_path / "c" / "decisions_train.json").read_text())["images"]
    assert [[t["text"] for t in r["texts"] if t["source"] == "synthetic"] for r in other] != synthetic


class Stop(Exception):
    pass


def test_a_stopped_run_resumes_to_the_uninterrupted_set(blip_folders, itm_folders, web, tmp_path, capsys):
    _, captioner = blip_folders
    _, filt = itm_folders
    code, err = capfilt(capsys, captioner, filt, web, tmp_path / "whole", "--samples-per-image", "2")
    assert code == 0, err
    # the same run stopped after its second batch (through the library, whose progress hook raises)
    models = load_any(captioner), load_any(filt)
    names = (str(Path(captioner).resolve()), str(Path(filt).resolve()))
    options = CapFiltOptions(samples_per_image=2, max_new_tokens=6, batch_size=2)
    done = []

    def stop_after_two(stats) -> None:
        done.append(stats.images)
        if len(done) == 2:
            raise Stop

    with pytest.raises(Stop):
        run_capfilt(*models, web, tmp_path / "part", options, names=names, progress=stop_after_two)
    progress = tmp_path / "part" / ".capfilt" / "progress.jsonl"
    assert len(progress.read_text().splitlines()) == 2 and not (tmp_path / "part" / "capfilt_train.json").exists()
    progress.write_text(progress.read_text()[:-20])  # the second line cut off mid-write: redone
    code, err = capfilt(capsys, captioner, filt, web, tmp_path / "part")
    assert code == 2 and "--resume" in err  # never overwritten without --resume / --force
    code, err = capfilt(capsys, captioner, filt, web, tmp_path / "part", "--resume")
    assert code == 2 and "samples_per_image: 2 in the file, 1 now" in err  # other settings: refused, not mixed
    assert "--force" in err and "--overwrite" not in err  # capfilt's flag, not vlp predict's
    code, err = capfilt(capsys, captioner, filt, web, tmp_path / "part", "--samples-per-image", "2", "--resume")
    assert code == 0, err
    # batch 0 (images 1-2) counted as done, batch 1 (cut off) redone, then batch 2
    assert [line.split(",")[0] for line in err.splitlines()] == ["capfilt: 4/5 images", "capfilt: 5/5 images"]
    for name in ("capfilt_train.json", "decisions_train.json"):
        assert (tmp_path / "part" / name).read_text() == (tmp_path / "whole" / name).read_text()
    # another threshold on a finished run: the set is written again from the logged probabilities, nothing redone
    logged = progress.read_text()
    code, err = capfilt(capsys, captioner, filt, web, tmp_path / "part", "--samples-per-image", "2", "--resume",
                        "--threshold", "0.3")  # fmt: skip
    assert code == 0 and err == "" and progress.read_text() == logged
    texts = [
        t for r in json.loads((tmp_path / "part" / "decisions_train.json").read_text())["images"] for t in r["texts"]
    ]
    assert [t["kept"] for t in texts] == [t["p_match"] > 0.3 for t in texts]
    assert len(json.loads((tmp_path / "part" / "capfilt_train.json").read_text())) == len(
        {(r["key"], t["text"]) for r in json.loads((tmp_path / "part" / "decisions_train.json").read_text())["images"]
         for t in r["texts"] if t["p_match"] > 0.3})  # fmt: skip


def test_webdataset_output_reads_back(blip_folders, itm_folders, web, tmp_path, capsys):
    _, captioner = blip_folders
    _, filt = itm_folders
    out = tmp_path / "wds"
    code, err = capfilt(capsys, captioner, filt, web, out, "--format", "wds", "--shard-size", "4", "--threshold",
                        "0.3")  # fmt: skip
    assert code == 0, err
    records = json.loads((out / "decisions_train.json").read_text())["images"]
    kept = [(Path(r["key"]).read_bytes(), t["text"]) for r in records for t in kept_texts(r)]
    assert kept, "the threshold should keep some texts"
    found = detect_data(out)
    assert found.type == "webdataset"
    config = from_dict(DataConfig, {**found.data_section(), "image_size": 32})
    assert len(list(out.glob("shards/capfilt_train-*.tar"))) == -(-len(kept) // 4)
    reader = ShardReader()
    back = [(image_bytes(item, reader), item.captions[0]) for item in read_web_images(config, "train")]
    reader.close()
    assert back == kept  # the images' own bytes, each with one kept text, in order
    # the shards feed the training loader: one sample per kept text, nothing skipped
    tokenizer = load_any(filt).tokenizer
    stream = build_dataset(config, "train", tokenizer, batch_size=2, shuffle=False, rank=0, world_size=1)
    items = list(stream)
    assert sum(len(i.batch.input_ids) for i in items) == len(kept) and not any(i.skips for i in items)
    # shards in, shards out; an ALBEF list needs image files, which shards do not have
    code, err = capfilt(capsys, captioner, filt, out, tmp_path / "again", "--format", "wds")
    assert code == 0, err
    code, err = capfilt(capsys, captioner, filt, out, tmp_path / "albef")
    assert code == 2 and "--format wds" in err


def test_resume_refuses_another_web_set_of_the_same_size(blip_folders, itm_folders, web, tmp_path, capsys):
    _, captioner = blip_folders
    _, filt = itm_folders
    code, err = capfilt(capsys, captioner, filt, web, tmp_path / "out")
    assert code == 0, err
    decisions = (tmp_path / "out" / "decisions_train.json").read_text()
    # the same five photos with other captions, in another folder: same image count, another web set
    other = tmp_path / "other"
    other.mkdir()
    entries = json.loads((web / "web_train.json").read_text())
    (other / "web_train.json").write_text(json.dumps([{**e, "caption": e["caption"] + " again"} for e in entries]))
    code, err = capfilt(capsys, captioner, filt, other, tmp_path / "out", "--resume")
    assert code == 2 and "--force" in err  # the refusal names each setting that differs, the file's and this run's
    assert f"data: {str(web.resolve())!r} in the file, {str(other.resolve())!r} now" in err and "items: " in err
    assert (tmp_path / "out" / "decisions_train.json").read_text() == decisions  # left as it was
    # the same folder with other captions: refused too
    (web / "web_train.json").write_text(json.dumps([{**e, "caption": e["caption"] + "!"} for e in entries]))
    code, err = capfilt(capsys, captioner, filt, web, tmp_path / "out", "--resume")
    assert code == 2 and "other settings (items: " in err and err.count(" in the file, ") == 1  # the one that differs


def test_another_format_on_resume_leaves_one_reading(blip_folders, itm_folders, web, tmp_path, capsys):
    _, captioner = blip_folders
    _, filt = itm_folders
    out = tmp_path / "out"
    code, err = capfilt(capsys, captioner, filt, web, out, "--format", "wds", "--threshold", "0")
    assert code == 0, err
    assert detect_data(out).type == "webdataset"
    code, err = capfilt(capsys, captioner, filt, web, out, "--resume", "--format", "albef-json", "--threshold", "0")
    assert code == 0, err
    assert detect_data(out).type == "albef" and not list(out.glob("shards/*.tar"))
    assert len(json.loads((out / "capfilt_train.json").read_text())) == 15  # 2 web + 1 synthetic per image
    code, err = capfilt(capsys, captioner, filt, web, out, "--force", "--format", "wds", "--threshold", "0")
    assert code == 0, err
    assert detect_data(out).type == "webdataset" and not (out / "capfilt_train.json").exists()


def test_shards_of_the_old_set_stay_until_the_new_set_is_written(
    blip_folders, itm_folders, web, tmp_path, capsys, monkeypatch
):
    _, captioner = blip_folders
    _, filt = itm_folders
    out = tmp_path / "out"
    code, err = capfilt(capsys, captioner, filt, web, out, "--format", "wds", "--shard-size", "1", "--threshold", "0")
    assert code == 0, err
    shards = {p.name: p.read_bytes() for p in out.glob("shards/*.tar")}
    assert len(shards) == 15
    import vlp.tasks.capfilt as capfilt_module

    real, calls = capfilt_module.write_atomic, []

    def fail_on_second_shard(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(path, data)

    monkeypatch.setattr(capfilt_module, "write_atomic", fail_on_second_shard)
    options = CapFiltOptions(max_new_tokens=6, batch_size=2, format="wds", shard_size=2, threshold=0.0)
    names = (str(Path(captioner).resolve()), str(Path(filt).resolve()))
    with pytest.raises(OSError, match="disk full"):
        run_capfilt(load_any(captioner), load_any(filt), web, out, options, names=names, resume=True)
    assert sorted(p.name for p in out.glob("shards/*.tar")) == sorted(shards)  # none of the old names deleted
    monkeypatch.setattr(capfilt_module, "write_atomic", real)
    run_capfilt(load_any(captioner), load_any(filt), web, out, options, names=names, resume=True)
    assert len(list(out.glob("shards/*.tar"))) == 8  # 15 samples by 2: the old set's other names are gone


def test_shapesworld_and_karpathy_folders_are_read_one_record_per_image(tmp_path):
    world = tmp_path / "shapes"
    generate(world, images=20, size=32, seed=0, workers=1, formats=("albef", "karpathy"))
    expected: dict[str, list[str]] = {}
    for entry in json.loads((world / "annotations" / "captions_train.json").read_text()):
        expected.setdefault(str((world / entry["image"]).resolve()), []).append(entry["caption"])
    found = {str(Path(i.path).resolve()): list(i.captions) for i in read_web_images(world, "train")}
    assert found == expected and all(len(c) == 5 for c in found.values())
    # the same images through the Karpathy file alone (a folder holding only dataset_shapes.json)
    karpathy = tmp_path / "karpathy"
    karpathy.mkdir()
    (karpathy / "dataset_shapes.json").write_text((world / "annotations" / "dataset_shapes.json").read_text())
    (karpathy / "images").symlink_to(world / "images")
    found = {str(Path(i.path).resolve()): sorted(i.captions) for i in read_web_images(karpathy, "train")}
    assert found == {k: sorted(v) for k, v in expected.items()}


def test_bad_inputs_name_what_is_wrong(blip_folders, itm_folders, web, tmp_path, capsys):
    _, captioner = blip_folders
    _, filt = itm_folders
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = capfilt(capsys, captioner, filt, empty, tmp_path / "o1")
    assert code == 2 and str(empty) in err
    code, err = capfilt(capsys, captioner, captioner, web, tmp_path / "o2")
    assert code == 2 and "--filter" in err and "itm" in err.lower()
    code, err = capfilt(capsys, filt, filt, web, tmp_path / "o3")
    assert code == 2 and "--captioner" in err and "decoder" in err
    with pytest.raises(ConfigError, match="--threshold"):
        CapFiltOptions(threshold=1.5)
