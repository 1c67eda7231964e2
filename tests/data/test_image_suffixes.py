"""One list of image suffixes for every reader: a folder of images for ``vlp predict`` (data.inputs), an
ImageNet-style class folder (sources.image_folder, detect), and WebDataset members (sources.webdataset)."""

from __future__ import annotations

import io
import tarfile

from vlp.data import detect, inputs
from vlp.data.sources import common, image_folder, webdataset
from vlp.data.sources.webdataset import TarSample

# torchvision ImageFolder's IMG_EXTENSIONS (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp) plus .gif
EXPECTED = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif"}
NAMES = ["a.ppm", "b.PGM", "c.gif", "d.webp", "e.JPG", "f.tiff"]


def test_one_constant_everywhere():
    assert set(common.IMAGE_SUFFIXES) == EXPECTED
    for module in (inputs, image_folder, detect):
        assert module.IMAGE_SUFFIXES is common.IMAGE_SUFFIXES, module.__name__
    assert set(webdataset.IMAGE_EXTENSIONS) == {s[1:] for s in EXPECTED}  # member extensions have no dot
    assert webdataset.IMAGE_EXTENSIONS[:3] == ("jpg", "jpeg", "png")  # the member a sample's image is read from


def test_inputs_folders_and_class_folders_list_the_same_files(tmp_path):
    cls = tmp_path / "cat"
    cls.mkdir()
    for name in [*NAMES, "notes.txt", "labels.json"]:
        (cls / name).write_bytes(b"x")
    listed = [p.name for p in inputs.folder_images(tmp_path)]
    assert listed == sorted(NAMES)
    assert [p.name for p in image_folder._images_of(cls)] == sorted(NAMES)
    assert [item.key.rsplit("/", 1)[1] for item in inputs.list_inputs([tmp_path])] == sorted(NAMES)


def test_shard_members_are_images_by_the_same_list(tmp_path):
    shard = tmp_path / "s-000.tar"
    with tarfile.open(shard, "w") as tar:
        for name in ["k1.ppm", "k2.gif", "k3.jpg", "k3.txt"]:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    keys = [item.key.rsplit("/", 1)[1] for item in inputs.list_inputs([shard])]
    assert keys == ["k1.ppm", "k2.gif", "k3.jpg"]
    assert TarSample("s", "k1", {"ppm": (0, 1), "txt": (1, 1)}).image_ext() == "ppm"
