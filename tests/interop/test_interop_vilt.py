"""transformers ViLT (base, VQA, retrieval, MLM) <-> vlp `vilt`: same fused tokens, pooled output and logits."""

from __future__ import annotations

import pytest
import torch
from interop_helpers import close, close_as_sets, padded_ids, perturb, write_bert_vocab

import vlp
from vlp import Batch
from vlp.interop import ConversionError, export_folder, import_folder

transformers = pytest.importorskip("transformers")

CLASSES = ["ViltModel", "ViltForQuestionAnswering", "ViltForImageAndTextRetrieval", "ViltForMaskedLM"]


def vilt_config(**changes) -> transformers.ViltConfig:
    values = dict(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )
    return transformers.ViltConfig(**{**values, **changes})


@pytest.fixture(scope="module", params=CLASSES)
def folders(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    cls = getattr(transformers, request.param)
    torch.manual_seed(0)
    reference = perturb(cls(vilt_config()))
    reference.save_pretrained(root / "hf")
    write_bert_vocab(root / "hf")
    transformers.ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=8).save_pretrained(root / "hf")
    import_folder(root / "hf", root / "vlp")
    export_folder(root / "vlp", root / "back")
    return cls, reference, root


def outputs_match(model, reference, images: torch.Tensor) -> None:
    ids, mask = padded_ids([4, 9, 6], 40, first=2, last=3, pad=0)
    with torch.no_grad():
        out = model(Batch(input_ids=ids, attention_mask=mask, images=images))
        fused = model.fuse(out.text, out.text_mask, out.image)
        ref = reference(input_ids=ids, attention_mask=mask.long(), pixel_values=images)
    name = type(reference).__name__
    if name == "ViltModel":
        length = ids.shape[1]
        close(fused.text[mask], ref.last_hidden_state[:, :length][mask])
        close(fused.pooled, ref.pooler_output)
        for row in range(len(ids)):  # transformers shuffles the patch tokens; compare them as sets
            close_as_sets(fused.image[row], ref.last_hidden_state[row, length:])
    elif name == "ViltForQuestionAnswering":
        close(model.heads["vqa"](fused.pooled), ref.logits)
    elif name == "ViltForImageAndTextRetrieval":
        close(model.heads["rank"](fused.pooled), ref.logits)
    else:
        close(model.heads["mlm"](fused.text)[mask], ref.logits[mask])


def test_vilt_parity_import_and_export(folders):
    cls, reference, root = folders
    model = vlp.load(root / "vlp")
    reloaded, info = cls.from_pretrained(root / "back", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    g = torch.Generator().manual_seed(3)
    # the configured 32x32 and a 32x48 image, whose position grid ViLT resizes (bilinear, align_corners)
    for images in (torch.randn(3, 3, 32, 32, generator=g), torch.randn(3, 3, 32, 48, generator=g)):
        outputs_match(model, reference, images)
        outputs_match(model, reloaded.eval(), images)


def test_vilt_folder_brings_tokenizer_and_preprocessing(folders):
    _, _, root = folders
    ours = vlp.load_tokenizer(root / "vlp")
    theirs = transformers.BertTokenizerFast.from_pretrained(root / "hf")
    text = ["a photo of two blue squares, left of the green triangle!"]
    assert ours(text).input_ids.tolist() == theirs(text)["input_ids"]
    pre = vlp.load_preprocess(root / "vlp")
    assert pre.resize == "vilt" and pre.size_divisor == 8 and pre.mean == (0.5, 0.5, 0.5)


def test_vilt_options_without_counterpart_are_refused(tmp_path):
    torch.manual_seed(0)
    transformers.ViltModel(vilt_config(max_image_length=4)).save_pretrained(tmp_path / "hf")
    with pytest.raises(ConversionError, match="max_image_length > 0 samples patches at random"):
        import_folder(tmp_path / "hf", tmp_path / "vlp")
    model = vlp.create_model("vilt-tiny")  # itm + mlm heads: no single transformers class holds both
    vlp.save_pretrained(model, tmp_path / "tiny")
    with pytest.raises(ConversionError, match=r"model.heads \['itm', 'mlm'\]"):
        export_folder(tmp_path / "tiny", tmp_path / "out")
