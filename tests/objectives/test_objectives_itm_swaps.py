"""ITM word-swap negatives: group resolution, the swaps drawn, and the loss against a pair-by-pair computation."""

import pytest
import torch
import torch.nn.functional as F
from objectives_toy_model import CLS, PAD, SEP, UNK, VOCAB, toy_batch

from vlp.config import ConfigError
from vlp.objectives import ITM, ITMConfig, build_objectives
from vlp.objectives.itm import positive_mask, sample_negatives
from vlp.objectives.swaps import draw_swaps, resolve_swap_groups, swappable_positions
from vlp.text.tokenizer import TokenizedText

# word -> its pieces in the toy vocabulary; "rhombus" is two pieces, so it is not swappable
WORDS = {"a": [5], "red": [6], "blue": [7], "green": [8], "circle": [9], "disc": [10], "square": [11], "star": [12]}
WORDS |= {"left": [13], "of": [14], "three": [15], "shapes": [16], "rhombus": [17, 18]}
RED, BLUE, GREEN, CIRCLE, DISC, SQUARE, STAR = 6, 7, 8, 9, 10, 11, 12
GROUPS = [["circle/disc", "square", "star", "rhombus"], ["red", "blue"]]


class WordTokenizer:
    """Whitespace words to the ids of ``WORDS`` ([UNK] otherwise), framed by [CLS] .. [SEP], as vlp's Tokenizer."""

    pad_id, unk_id, cls_id, sep_id, mask_id, vocab_size = PAD, UNK, CLS, SEP, 4, VOCAB

    def __call__(self, texts: list[str]) -> TokenizedText:
        rows = []
        for text in texts:
            ids, words = [CLS], [-1]
            for w, word in enumerate(text.split()):
                pieces = WORDS.get(word, [UNK])
                ids += pieces
                words += [w] * len(pieces)
            rows.append((ids + [SEP], words + [-1]))
        length = max(len(ids) for ids, _ in rows)
        pad = [(ids + [PAD] * (length - len(ids)), words + [-1] * (length - len(ids))) for ids, words in rows]
        input_ids = torch.tensor([ids for ids, _ in pad])
        return TokenizedText(
            input_ids, input_ids != PAD, torch.zeros_like(input_ids), torch.tensor([w for _, w in pad])
        )


def test_groups_resolve_to_token_ids_with_uniform_replacement() -> None:
    table = resolve_swap_groups(GROUPS, WordTokenizer(), VOCAB)
    assert table.skipped == ["rhombus"]
    assert table.tokens.tolist() == [CIRCLE, DISC, SQUARE, STAR, RED, BLUE]
    concept = {t: int(table.token_concept[t]) for t in (CIRCLE, DISC, SQUARE, STAR, RED, BLUE)}
    assert concept[CIRCLE] == concept[DISC] and len(set(concept.values())) == 5
    assert (table.token_concept >= 0).sum() == 6
    # hand-worked: circle -> square or star (1/2 each), never its synonym disc; square -> the circle concept
    # (1/2, split between its two words) or star (1/2); red -> blue only
    by_token = dict(zip(table.tokens.tolist(), range(6)))
    expected = {
        CIRCLE: {SQUARE: 0.5, STAR: 0.5},
        SQUARE: {CIRCLE: 0.25, DISC: 0.25, STAR: 0.5},
        RED: {BLUE: 1.0},
        BLUE: {RED: 1.0},
    }
    for token, probs in expected.items():
        row = table.replacement[table.token_concept[token]]
        want = torch.zeros(6)
        for t, p in probs.items():
            want[by_token[t]] = p
        assert torch.allclose(row, want), (token, row)


def test_bad_groups_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"swap_words\[1\]: 1 of its entries .*skipped words: rhombus"):
        resolve_swap_groups([["red", "blue"], ["circle", "rhombus"]], WordTokenizer(), VOCAB)
    with pytest.raises(ConfigError, match=r"swap_words\[1\]: word 'red' .* already in the swap entry 'red'"):
        resolve_swap_groups([["red", "blue"], ["red", "circle"]], WordTokenizer(), VOCAB)
    with pytest.raises(ConfigError, match=r"swap_words\[0\]: expected a list of words"):
        resolve_swap_groups(["red"], WordTokenizer(), VOCAB)
    with pytest.raises(ConfigError, match="objectives.itm.swap_words: .* needs the tokenizer"):
        build_objectives({"itm": {"swap_words": GROUPS}})
    with pytest.raises(ValueError, match="swap_fraction must be in"):
        ITMConfig(swap_fraction=0.0)


def test_swaps_replace_exactly_one_word_by_another_concept() -> None:
    tok = WordTokenizer()
    table = resolve_swap_groups(GROUPS, tok, VOCAB)
    text = tok(["a red circle left of a blue square", "three shapes", "a disc", "a rhombus"])
    positions = swappable_positions(text.input_ids, text.attention_mask, table.token_concept, text.word_ids)
    # hand-worked: red circle blue square in row 0, nothing in row 1 ("three shapes") nor row 3 (rhombus is
    # not a group word), disc in row 2
    assert positions[0].nonzero().squeeze(1).tolist() == [2, 3, 7, 8]
    assert not positions[1].any() and not positions[3].any()
    assert positions[2].nonzero().squeeze(1).tolist() == [2]
    g = torch.Generator().manual_seed(0)
    counts: dict[tuple[int, int], int] = {}
    allowed = {RED: {BLUE}, BLUE: {RED}, CIRCLE: {SQUARE, STAR}, DISC: {SQUARE, STAR}, SQUARE: {CIRCLE, DISC, STAR}}
    for _ in range(400):
        rows, swapped = draw_swaps(text.input_ids, positions, table, generator=g)
        assert rows.tolist() == [0, 2]  # captions without group words get no swap
        for row, ids in zip(rows.tolist(), swapped):
            diff = (ids != text.input_ids[row]).nonzero().squeeze(1).tolist()
            assert len(diff) == 1, diff  # exactly one token changed ...
            old, new = int(text.input_ids[row, diff[0]]), int(ids[diff[0]])
            assert new in allowed[old], (old, new)  # ... to another concept of its group, never a synonym
            counts[(diff[0], new)] = counts.get((diff[0], new), 0) + 1
    # row 0 draws each of its 4 words with probability 1/4; square -> disc with 1/4 of those
    assert counts[(2, BLUE)] / 400 == pytest.approx(0.25, abs=0.07)
    assert counts[(8, DISC)] / 400 == pytest.approx(1 / 16, abs=0.04)


def test_swaps_need_a_whole_word_and_follow_the_fraction() -> None:
    table = resolve_swap_groups(GROUPS, WordTokenizer(), VOCAB)
    ids = torch.tensor([[CLS, 5, CIRCLE, 18, SEP], [CLS, 5, CIRCLE, 5, SEP]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    word_ids = torch.tensor([[-1, 0, 1, 1, -1], [-1, 0, 1, 2, -1]])  # row 0: "circle" is a word's first piece
    found = swappable_positions(ids, mask, table.token_concept, word_ids)
    assert found.tolist() == [[False] * 5, [False, False, True, False, False]]
    assert swappable_positions(ids, mask, table.token_concept, None)[:, 2].all()  # without word_ids: any token
    many = torch.tensor([[CLS, RED, SEP]]).repeat(2000, 1)
    found = swappable_positions(many, torch.ones_like(many, dtype=torch.bool), table.token_concept, None)
    rows, swapped = draw_swaps(many, found, table, fraction=0.3, generator=torch.Generator().manual_seed(1))
    assert rows.numel() / 2000 == pytest.approx(0.3, abs=0.04)
    assert (swapped[:, 1] == BLUE).all()


@pytest.mark.parametrize(("itc_weight", "swap_loss"), [(0.0, "binary"), (0.5, "binary"), (0.0, "pair")])
def test_itm_with_swaps_matches_pair_by_pair(toy_model, itc_weight: float, swap_loss: str) -> None:
    batch = toy_batch(size=6, seed=2)
    groups = [["t5/t6", "t7", "t8", "t9", "t10"], ["t11", "t12", "t13/t14"], ["t15", "t16", "t17", "t18"]]
    words = {f"t{i}": [i] for i in range(5, VOCAB)}

    class Tok(WordTokenizer):
        def __call__(self, texts: list[str]) -> TokenizedText:
            ids = torch.tensor([[CLS, *words[t], SEP] for t in texts])
            return TokenizedText(ids, ids != PAD, torch.zeros_like(ids), torch.zeros_like(ids))

    cfg = ITMConfig(
        negatives="random", seed=3, swap_words=groups, swap_weight=0.7, swap_itc_weight=itc_weight, swap_loss=swap_loss
    )
    itm = ITM(cfg)
    itm.resolve_swaps(Tok())
    outputs = toy_model(batch)
    loss, logs = itm(outputs, batch)

    # the same draws in the same order, then every pair fused on its own
    g = torch.Generator().manual_seed(3)
    positive = positive_mask(6, None, torch.device("cpu"))
    neg_image, _ = sample_negatives(None, positive, g)
    neg_text, _ = sample_negatives(None, positive, g)
    table = resolve_swap_groups(groups, Tok(), VOCAB)
    found = swappable_positions(batch.input_ids, batch.attention_mask, table.token_concept, batch.word_ids)
    rows, swapped = draw_swaps(batch.input_ids, found, table, generator=g)
    assert 0 < rows.numel() <= 6 and logs["itm_swap_frac"] == pytest.approx(rows.numel() / 6)

    def score(text, mask, v):
        image = outputs.image
        visual = type(image)(image.tokens[v : v + 1], image.mask[v : v + 1], image.positions[v : v + 1])
        return toy_model.heads["itm"](toy_model.fuse(text, mask, visual).pooled)[0]

    pairs = [(i, i, 1) for i in range(6)] + [(i, int(neg_image[i]), 0) for i in range(6)]
    pairs += [(int(neg_text[i]), i, 0) for i in range(6)]
    logits = torch.stack([score(outputs.text[t : t + 1], outputs.text_mask[t : t + 1], v) for t, v, _ in pairs])
    labels = torch.tensor([label for *_, label in pairs])
    swap_logits = []
    for k, row in enumerate(rows.tolist()):
        mask = batch.attention_mask[row : row + 1]
        text = toy_model.text_tokens(swapped[k : k + 1], mask, batch.token_type_ids[row : row + 1])
        swap_logits.append(score(text, mask.bool(), row))
    swap_logits = torch.stack(swap_logits)
    margin, swap_margin = logits[rows, 1] - logits[rows, 0], swap_logits[:, 1] - swap_logits[:, 0]
    if swap_loss == "pair":  # the true caption's match log-odds against its swap's, for the same image
        swap_term = -torch.log_softmax(torch.stack([margin, swap_margin], 1), 1)[:, 0].mean()
    else:
        swap_term = F.cross_entropy(swap_logits, torch.zeros(len(rows)).long())
    expected = F.cross_entropy(logits, labels) + 0.7 * swap_term
    if itc_weight:
        image = outputs.image_embed[rows]
        swap_embed = toy_model.encode_text(swapped, batch.attention_mask[rows], batch.token_type_ids[rows])
        sims = torch.stack([(image * outputs.text_embed[rows]).sum(1), (image * swap_embed).sum(1)], 1)
        two_way = -torch.log_softmax(sims * outputs.logit_scale.exp(), 1)[:, 0].mean()
        expected = expected + itc_weight * two_way
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["itm_acc"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert logs["itm_swap_acc"] == pytest.approx((swap_logits.argmax(1) == 0).float().mean().item())
    assert logs["itm_swap_rank"] == pytest.approx((margin > swap_margin).float().mean().item())
    loss.backward()
    assert toy_model.heads["itm"].weight.grad.abs().sum() > 0


def test_build_objectives_resolves_the_words() -> None:
    with pytest.warns(UserWarning, match=r"swap_words: 1 word\(s\) are not one token .* swapped: rhombus"):
        built = build_objectives({"itm": {"swap_words": GROUPS}}, tokenizer=WordTokenizer())
    itm = built["itm"][1]
    assert itm.swap_skipped == ["rhombus"]
    with pytest.raises(ConfigError, match="not resolved to token ids"):
        ITM(ITMConfig(swap_words=GROUPS))._swap_table(torch.device("cpu"))


def test_real_wordpiece_tokenizer_resolves_whole_words_only() -> None:
    from vlp.text.tokenizer import Tokenizer

    corpus = ["a red circle left of a blue square", "two red circles", "a green star"] * 20
    tok = Tokenizer.train(corpus, vocab_size=90)  # "rhombus" is not in the corpus: several pieces
    table = resolve_swap_groups([["circle", "square", "star", "rhombus"], ["red", "blue", "green"]], tok, 90)
    assert table.skipped == ["rhombus"]
    words = ["circle", "square", "star", "red", "blue", "green"]
    assert table.tokens.tolist() == tok.convert_tokens_to_ids(words)
    text = tok(["two red circles", "a green star"])
    found = swappable_positions(text.input_ids, text.attention_mask, table.token_concept, text.word_ids)
    swapped_tokens = [tok.convert_ids_to_tokens(text.input_ids[b][found[b]]) for b in range(2)]
    assert swapped_tokens == [["red"], ["green", "star"]]  # "circles" is its own token, not in a group
