"""The task helpers every eval command uses (vlp.tasks.common): model folders, eval data sections,
image preprocessing for the predict APIs, the metrics table and results.json."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

import vlp
from vlp.config import ConfigError
from vlp.data.config import CLIP_MEAN, CLIP_STD, DataConfig, TransformConfig
from vlp.tasks import common
from vlp.text import Tokenizer


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("common") / "clip"
    torch.manual_seed(0)
    model = vlp.create_model("clip-tiny")
    tok = Tokenizer.train(["a red circle", "two blue squares"], vocab_size=60)
    return vlp.save_pretrained(model, folder, tokenizer=tok), model


def test_load_model_reads_a_save_pretrained_folder(saved):
    folder, model = saved
    loaded = common.load_model(folder)
    assert not loaded.model.training and loaded.task == {}
    assert loaded.tokenizer.get_vocab() == Tokenizer.load(folder).get_vocab()  # saved beside the weights
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    assert loaded.recipe.data.image_size == 32  # what predict/eval preprocess with


def test_load_model_refuses_weights_that_do_not_fit(saved, tmp_path):
    folder, _ = saved
    for problem in ("missing", "unexpected"):
        broken = tmp_path / problem
        broken.mkdir()
        (broken / "recipe.yaml").write_text((folder / "recipe.yaml").read_text())
        weights = load_file(str(folder / "model.safetensors"))
        if problem == "missing":
            weights.pop("text_proj.weight")
        else:
            weights["extra.weight"] = torch.zeros(2)
        save_file(weights, str(broken / "model.safetensors"))
        with pytest.raises(
            ConfigError, match=f"{problem} keys: .*{'text_proj.weight' if problem == 'missing' else 'extra'}"
        ):
            common.load_model(broken, tokenizer=folder)
    with pytest.raises(ConfigError, match="does not exist"):
        common.load_model(tmp_path / "nowhere")


def test_eval_data_config_sources(tmp_path):
    base = DataConfig(type="shapesworld", root="/train/shapes", image_size=32, max_text_len=24,
                      options={"regions": True, "load_images": False})  # fmt: skip
    # no --data: the model's own data section, reading the task's ShapesWorld format
    cfg = common.eval_data_config(base, None, "shapesworld", "vqa")
    assert (cfg.root, cfg.options) == ("/train/shapes", {"regions": True, "load_images": False, "format": "vqa"})
    # a folder in the same format keeps the model's loader options (a region model needs its regions)
    cfg = common.eval_data_config(base, tmp_path, "shapesworld", "captions", ["options.mode=images"])
    assert cfg.root == str(tmp_path) and cfg.options == {"regions": True, "load_images": False,
                                                          "format": "captions", "mode": "images"}  # fmt: skip
    # another format starts from its own defaults; sizes always come from the model
    cfg = common.eval_data_config(base, tmp_path, "karpathy", "captions", ["data.paths.annotations=k.json"])
    assert (cfg.type, cfg.paths, cfg.options, cfg.image_size) == ("karpathy", {"annotations": "k.json"}, {}, 32)
    spec = tmp_path / "data.yaml"
    spec.write_text(yaml.safe_dump({"data": {"type": "albef", "root": "/x", "paths": {"annotations": "a.json"}}}))
    cfg = common.eval_data_config(base, spec, "shapesworld", "captions")
    assert (cfg.type, cfg.root, cfg.max_text_len) == ("albef", "/x", 24)
    with pytest.raises(ConfigError, match="neither a dataset folder nor a YAML file"):
        common.eval_data_config(base, tmp_path / "missing", "shapesworld", "captions")
    with pytest.raises(ConfigError, match="data.image_size"):
        common.eval_data_config(base, None, "shapesworld", "captions", ["image_size=big"])


def test_preprocess_images_resizes_and_normalizes(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (50, 40), (255, 0, 0)).save(path)
    out = common.preprocess_images([path, Image.new("RGB", (32, 32), (0, 51, 255))], DataConfig(image_size=16))
    assert out.shape == (2, 3, 16, 16)
    for row, rgb in enumerate([(255, 0, 0), (0, 51, 255)]):
        for c in range(3):  # a solid colour stays solid: (value / 255 - mean) / std everywhere
            expected = (rgb[c] / 255 - CLIP_MEAN[c]) / CLIP_STD[c]
            torch.testing.assert_close(out[row, c], torch.full((16, 16), expected), atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="single image"):
        common.preprocess_images(path, DataConfig())
    # ViLT's rule keeps the aspect ratio: 50x40 -> 20x16, 32x32 -> 16x16 (multiples of 4); named, not a stack error
    vilt = DataConfig(image_size=16, transform=TransformConfig(eval_resize="vilt", size_divisor=4))
    with pytest.raises(ValueError, match=r"different sizes \[\(16, 20\), \(16, 16\)\] \(height, width\)"):
        common.preprocess_images([path, Image.new("RGB", (32, 32))], vilt)


def test_metrics_table_and_results_json(tmp_path):
    metrics = {"overall": 62.5, "per_answer_type": {"yes/no": 80.0, "number": 0.9}, "predictions": [1, 2], "n": 4}
    table = common.metrics_table(metrics, {"overall": 43.0, "per_answer_type": {"yes/no": 50.0}}, "vqa on x")
    lines = table.splitlines()
    assert lines[0] == "vqa on x" and lines[1].split() == ["metric", "value", "chance"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:]}
    # number's 0.9 is a VQA accuracy in percent like the others, so it gets 2 decimals too (it printed 0.9000)
    assert rows == {"overall": ["62.50", "43.00"], "per_answer_type/yes/no": ["80.00", "50.00"],
                    "per_answer_type/number": ["0.90"], "n": ["4"]}  # fmt: skip
    path = common.write_results(tmp_path / "out", {"metrics": metrics, "tensor": torch.tensor([1.5])})
    assert json.loads(path.read_text()) == {"metrics": metrics, "tensor": [1.5]}
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["results.json"]  # no temporary file left behind


def test_metrics_table_prints_percentages_alike_and_caption_scores_on_their_scale():
    """Tagging's exact match 0.5 (%) beside mAP 77.25 (%): both with 2 decimals, not 0.5000 like a fraction."""
    table = common.metrics_table(
        {"map": 77.25, "exact_match": 0.5, "Bleu_4": 0.1234, "CIDEr": 1.5, "C": 0.01}, {"exact_match": 12.0}
    )
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:]}
    assert rows == {"map": ["77.25"], "exact_match": ["0.50", "12.00"], "Bleu_4": ["0.1234"], "CIDEr": ["1.50"],
                    "C": ["0.0100"]}  # fmt: skip


def test_eval_data_is_recognised_from_the_folder(tmp_path, capsys):
    from vlp.config import ConfigError

    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "dataset_flickr30k.json").write_text('{"images": []}')
    base = DataConfig(type="albef", image_size=16, options={"mode": "images"})
    found = common.eval_data_config(base, tmp_path, None, "captions")
    assert (found.type, found.root, found.paths) == (
        "karpathy",
        str(tmp_path),
        {"annotations": "annotations/dataset_flickr30k.json"},
    )
    assert found.image_size == 16 and found.options == {}  # another type starts from its own options
    assert "read as karpathy (annotations/dataset_flickr30k.json)" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"found nothing of the kinds this command reads \(vqav2\)"):
        common.eval_data_config(base, tmp_path, None, "vqa")
    named = common.eval_data_config(base, tmp_path, "albef", "captions", ["paths.annotations=x.json"])
    assert (named.type, named.paths) == ("albef", {"annotations": "x.json"})
