"""Retrieval evaluation: R@1/5/10 both ways, their means and RSUM (Karpathy protocol), with chance."""

from __future__ import annotations

from typing import Any

from vlp.config import ConfigError
from vlp.data.config import DataConfig
from vlp.metrics.retrieval import chance_recall, retrieval_metrics
from vlp.tasks.common import build_eval_dataset, iterate_batches, model_data_config
from vlp.tasks.retrieval.head import encode, resolve_mode, score_matrices


def evaluate(
    model: Any,
    tokenizer: Any,
    data: Any,
    *,
    split: str = "test",
    mode: str = "auto",
    k: int = 16,
    add_itc: bool = False,
    batch_size: int = 64,
    pair_batch_size: int = 256,
    device: Any = None,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Retrieval metrics of ``model`` on ``data``.

    ``data``: a :class:`~vlp.data.config.DataConfig` (its ``split`` is read one record per image)
    or a dataset with ``texts``, ``txt2img``, ``img2txt`` and image samples carrying
    ``image_index`` (e.g. a :class:`~vlp.data.dataset.VLDataset` in ``images`` mode).

    Returns ``i2t_r1/5/10``, ``t2i_r1/5/10``, means, ``rsum`` (percent), ``mode``, ``k``,
    ``num_pairs`` (fusion passes), ``n_images``, ``n_texts`` and ``chance`` (same keys).
    """
    device = device if device is not None else next(model.parameters()).device
    dataset = build_eval_dataset(data, split, tokenizer) if isinstance(data, DataConfig) else data
    if getattr(dataset, "texts", None) is None or getattr(dataset, "txt2img", None) is None:
        raise ConfigError("retrieval: the data must be indexed one record per image with texts (options.mode: images)")
    texts, txt2img = list(dataset.texts), list(dataset.txt2img)
    img2txt = dataset.img2txt
    mode = resolve_mode(model, mode)
    max_len = data.max_text_len if isinstance(data, DataConfig) else model_data_config(model).max_text_len
    # the tokenizer only encodes object tags here (OSCAR); images-mode samples carry no text. An
    # unreadable image is skipped by the loader and then refused by encode(): recall needs them all.
    images = iterate_batches(dataset, tokenizer, batch_size, max_len, num_workers=num_workers)
    was_training = model.training
    model.eval()
    try:
        encoded = encode(model, images, texts, tokenizer, mode=mode, device=device, max_text_len=max_len,
                         text_batch_size=batch_size)  # fmt: skip
        scores = score_matrices(model, encoded, mode, k=k, add_itc=add_itc, pair_batch_size=pair_batch_size,
                                device=device)  # fmt: skip
    finally:
        model.train(was_training)
    metrics: dict[str, Any] = retrieval_metrics(scores.i2t, txt2img, img2txt, sim_t2i=scores.t2i)
    img2txt = img2txt or [[t for t, i in enumerate(txt2img) if i == n] for n in range(scores.i2t.shape[0])]
    metrics.update(mode=mode, num_pairs=scores.num_pairs, n_images=len(img2txt), n_texts=len(texts))
    if mode == "two_stage":
        metrics["k"] = k
    metrics["chance"] = chance_recall(img2txt, len(texts))
    return metrics
