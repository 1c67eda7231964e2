"""Hub model ids: ``vlp convert org/name`` and ``create_model(pretrained="org/name")`` read the local
Hugging Face cache (``models--ORG--NAME/refs/main`` -> ``snapshots/<commit>``) with no network, and say
which paths they tried when the id is neither cached nor downloadable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from interop_helpers import close, perturb

import vlp
from vlp.cli import main
from vlp.interop.hub import hub_cache, resolve

transformers = pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")


@pytest.fixture(scope="module")
def hf_clip():
    text = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=16, bos_token_id=97, eos_token_id=98)  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=16)  # fmt: skip
    torch.manual_seed(0)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    return perturb(transformers.CLIPModel(config))


def cache_model(cache, repo_id: str, model, commit: str = "0123abcd") -> None:
    """What huggingface_hub leaves behind after a download: refs/main names the snapshot's commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    model.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")


@pytest.fixture
def no_download(monkeypatch):
    """Offline, and any download attempt fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("snapshot_download must not be called")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


def test_convert_and_create_model_by_id_from_the_cache(hf_clip, tmp_path, monkeypatch, no_download, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # no local folder ./org/tiny-clip
    cache_model(tmp_path / "cache", "org/tiny-clip", hf_clip)
    assert main(["convert", "org/tiny-clip", str(tmp_path / "out")]) == 0
    assert "models--org--tiny-clip" in capsys.readouterr().out  # the resolved snapshot is reported
    ids = torch.tensor([[97, 5, 9, 98, 0], [97, 5, 6, 7, 98]])
    mask = torch.arange(5) <= (ids == 98).int().argmax(1, keepdim=True)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf_clip(input_ids=ids, attention_mask=mask.long(), pixel_values=images)
        for model in (vlp.load(tmp_path / "out"), vlp.create_model("clip", pretrained="org/tiny-clip")):
            close(model.encode_text(ids, mask), ref.text_embeds)
            close(model.encode_image(images), ref.image_embeds)


def test_cache_folder_follows_the_hf_environment(tmp_path, monkeypatch):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub_cache() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub_cache() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub_cache() == tmp_path / "cache"


def test_revision_and_local_paths(hf_clip, tmp_path, monkeypatch, no_download):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    cache_model(tmp_path / "cache", "org/tiny-clip", hf_clip, commit="feedbeef")
    snapshot = tmp_path / "cache" / "models--org--tiny-clip" / "snapshots" / "feedbeef"
    assert resolve("org/tiny-clip") == snapshot
    assert resolve("hf-hub:org/tiny-clip@feedbeef") == snapshot  # OpenCLIP's prefix; a commit as revision
    # an existing local folder wins over an id of the same spelling; a non-id string stays a path
    (tmp_path / "org" / "tiny-clip").mkdir(parents=True)
    assert resolve("org/tiny-clip") == Path("org/tiny-clip")
    assert resolve("no_such_folder") == Path("no_such_folder")


def test_unknown_id_offline_names_the_paths_tried(tmp_path, monkeypatch, no_download, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "org/missing", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "cache" / "models--org--missing" / "refs" / "main") in err
    assert "HF_HUB_OFFLINE" in err and "not in the Hugging Face cache" in err
    with pytest.raises(FileNotFoundError, match=r"models--org--missing.*not downloaded: HF_HUB_OFFLINE"):
        vlp.create_model("clip", pretrained="org/missing")


def test_online_ids_are_downloaded_into_the_same_cache(hf_clip, tmp_path, monkeypatch):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_download(repo_id, revision=None, cache_dir=None, allow_patterns=None):
        # stands in for the network: writes what a download would, where huggingface_hub would
        calls.append((repo_id, revision, cache_dir, allow_patterns))
        cache_model(tmp_path / "cache", repo_id, hf_clip)
        return str(tmp_path / "cache" / ("models--" + repo_id.replace("/", "--")) / "snapshots" / "0123abcd")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    folder = resolve("org/remote")
    assert (folder / "config.json").is_file()
    assert calls[0][:3] == ("org/remote", "main", str(tmp_path / "cache")) and "*.safetensors" in calls[0][3]
    assert len(calls) == 1  # safetensors weights came: no second pass for pickled .bin files
    assert resolve("org/remote") == folder and len(calls) == 1  # cached now
