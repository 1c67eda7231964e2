"""Tokenizer behaviour on hand-worked cases: ids, word ids, truncation, padding, tags, decode."""

import pickle
import threading

import pytest
import torch

from vlp.text import TokenizedText, Tokenizer

# Specials deliberately NOT at ids 0..4, so that any assumed id shows up as a wrong value.
VOCAB = ["a", "dog", "play", "##ing", "snow", "##board", "##s", ".", "'", "s", "the", "red", "hat", ","]
VOCAB += ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "man", "on", "cafe", "table", "n", "t", "don"]
ID = {tok: i for i, tok in enumerate(VOCAB)}

CAPTIONS = [
    "A man riding a horse on the beach.",
    "Two dogs are playing in the snow, near a red fence.",
    "A woman's hat on a wooden table.",
    "Children don't like the rain!",
    "A café with three tables outside.",
    "The skier is jumping over a small hill.",
] * 4


@pytest.fixture(scope="module")
def hand(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("hand") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return Tokenizer.load(path)


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return Tokenizer.train(CAPTIONS, vocab_size=150)


def test_special_ids_are_read_from_the_vocab(hand):
    assert (hand.pad_id, hand.unk_id, hand.cls_id, hand.sep_id, hand.mask_id) == (14, 15, 16, 17, 18)
    assert hand.vocab_size == len(VOCAB)
    assert hand.special_ids == {14, 15, 16, 17, 18}


def test_multi_piece_words_get_one_word_id(hand):
    out = hand(["A dog playing snowboards.", "the  RED hat"])
    row0 = ["[CLS]", "a", "dog", "play", "##ing", "snow", "##board", "##s", ".", "[SEP]"]
    row1 = ["[CLS]", "the", "red", "hat", "[SEP]"] + ["[PAD]"] * 5
    assert out.input_ids.tolist() == [[ID[t] for t in row0], [ID[t] for t in row1]]
    assert out.word_ids.tolist() == [[-1, 0, 1, 2, 2, 3, 3, 3, 4, -1], [-1, 0, 1, 2, -1, -1, -1, -1, -1, -1]]
    assert out.attention_mask.tolist() == [[True] * 10, [True] * 5 + [False] * 5]
    assert out.attention_mask.dtype == torch.bool and out.input_ids.dtype == torch.long
    assert out.token_type_ids.abs().sum() == 0


def test_punctuation_is_a_word_and_unknown_words_are_unk(hand):
    out = hand(["the dog's zebra"])
    tokens = hand.convert_ids_to_tokens(out.input_ids[0])
    assert tokens == ["[CLS]", "the", "dog", "'", "s", "[UNK]", "[SEP]"]
    assert out.word_ids[0].tolist() == [-1, 0, 1, 2, 3, 4, -1]


def test_truncation_keeps_sep_and_padding_modes(hand):
    out = hand(["a dog playing snowboards on the table"], max_length=6)
    assert hand.convert_ids_to_tokens(out.input_ids[0]) == ["[CLS]", "a", "dog", "play", "##ing", "[SEP]"]
    assert out.word_ids[0].tolist() == [-1, 0, 1, 2, 2, -1]
    padded = hand(["a dog", "the hat"], max_length=7, padding="max_length")
    assert padded.input_ids.shape == (2, 7)
    assert padded.input_ids[0].tolist() == [ID["[CLS]"], ID["a"], ID["dog"], ID["[SEP]"]] + [ID["[PAD]"]] * 3
    assert padded.attention_mask.sum(1).tolist() == [4, 4]


def test_pair_segments_and_word_ids_restart(hand):
    out = hand(["a dog"], pair=["the red hat"])
    expected = ["[CLS]", "a", "dog", "[SEP]", "the", "red", "hat", "[SEP]"]
    assert hand.convert_ids_to_tokens(out.input_ids[0]) == expected
    assert out.token_type_ids[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert out.word_ids[0].tolist() == [-1, 0, 1, -1, 0, 1, 2, -1]


def test_encode_tags_is_tags_then_sep_in_segment_one(hand):
    out = hand.encode_tags([["dog", "red hat"], [], ["snowboard", "table", "man", "hat"]], max_length=5)
    assert hand.convert_ids_to_tokens(out.input_ids[0]) == ["dog", "red", "hat", "[SEP]", "[PAD]"]
    assert out.input_ids[1].tolist() == [ID["[SEP]"]] + [ID["[PAD]"]] * 4
    # truncated token-wise to max_length - 1 pieces, then [SEP]
    assert hand.convert_ids_to_tokens(out.input_ids[2]) == ["snow", "##board", "table", "man", "[SEP]"]
    assert out.token_type_ids.tolist() == [[1, 1, 1, 1, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert out.word_ids[0].tolist() == [0, 1, 2, -1, -1]
    assert out.attention_mask.sum(1).tolist() == [4, 1, 5]
    # concatenated after a caption this is OSCAR's [CLS] caption [SEP] tags [SEP]
    caption = hand(["a man"])
    joined = torch.cat([caption.input_ids[0], out.input_ids[0, :4]]).tolist()
    assert joined == hand(["a man"], pair=["dog red hat"]).input_ids[0].tolist()


def test_decode_rejoins_pieces_and_punctuation(hand):
    ids = hand(["A dog playing snowboards, don't."]).input_ids[0]
    assert hand.decode(ids) == "a dog playing snowboards, don't."
    assert hand.decode(ids, skip_special=False).startswith("[CLS] a dog")
    assert hand.batch_decode(hand(["the hat", "a dog"]).input_ids) == ["the hat", "a dog"]
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 26\)"):
        hand.decode([3, 99])


def test_trained_round_trip_equals_normalized_text(trained):
    assert trained.vocab_size <= 150
    assert trained.lowercase
    for caption in CAPTIONS[:6]:
        ids = trained([caption], max_length=64).input_ids[0]
        assert trained.decode(ids) == " ".join(trained.normalize(caption).split())
    assert trained.normalize("A Café") == "a cafe"  # accents stripped with lowercase (BERT's rule)
    assert trained.convert_ids_to_tokens(trained(["qqq"]).input_ids[0])[1] == "[UNK]"


def test_cased_training_keeps_case_and_accents():
    tok = Tokenizer.train(["Café Bar", "café bar"], vocab_size=60, lowercase=False)
    assert tok.normalize("Café") == "Café"
    assert tok.decode(tok(["Café Bar"]).input_ids[0]) == "Café Bar"


def test_pickle_and_threads_give_the_same_ids(trained):
    copy = pickle.loads(pickle.dumps(trained))
    reference = trained(CAPTIONS[:6], max_length=9).input_ids
    assert torch.equal(copy(CAPTIONS[:6], max_length=9).input_ids, reference)
    # threads calling with different max_length must not see each other's truncation setting
    results = {}

    def work(length):
        for _ in range(20):
            results[length] = trained(CAPTIONS[:6], max_length=length).input_ids

    threads = [threading.Thread(target=work, args=(n,)) for n in (5, 9, 30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(results[9], reference)
    assert results[5].shape[1] == 5 and results[30].shape[1] > 9


def test_tokenized_text_moves_and_counts(hand):
    out = hand(["a dog", "the hat"])
    assert isinstance(out, TokenizedText) and len(out) == 2
    moved = out.to("cpu")
    assert torch.equal(moved.word_ids, out.word_ids)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda t: t("a dog"), TypeError, "got one string; wrap it in a list"),
        (lambda t: t(["a", 3]), TypeError, r"texts\[1\]: expected a string, got int"),
        (lambda t: t(["a"], padding="max"), ValueError, "padding='max'"),
        (lambda t: t(["a"], max_length=2), ValueError, "max_length=2"),
        (lambda t: t(["a", "b"], pair=["c"]), ValueError, "pair has 1 texts but texts has 2"),
        (lambda t: t.encode_tags(["dog"]), TypeError, r"tag_lists\[0\]: expected a list of strings"),
        (lambda t: t.decode(torch.zeros(2, 2, dtype=torch.long)), ValueError, "use batch_decode"),
    ],
)
def test_bad_calls_say_what_was_expected(hand, call, error, message):
    with pytest.raises(error, match=message):
        call(hand)


def test_train_rejects_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size=5"):
        Tokenizer.train(["a dog"], vocab_size=5)
    with pytest.raises(ValueError, match="corpus has no text"):
        Tokenizer.train([], vocab_size=50)
    with pytest.raises(TypeError, match=r"texts\[1\]: expected a string"):
        Tokenizer.train(["a dog", None], vocab_size=50)


def test_pad_rows_on_a_hand_worked_batch():
    from vlp.text.tokenized import pad_rows

    rows = [([5, 6, 7], [0, 0, 1], [-1, 0, -1]), ([9], [0], [-1])]
    out = pad_rows(rows, None, pad_id=2)
    assert out.input_ids.tolist() == [[5, 6, 7], [9, 2, 2]]
    assert out.token_type_ids.tolist() == [[0, 0, 1], [0, 0, 0]]
    assert out.word_ids.tolist() == [[-1, 0, -1], [-1, -1, -1]]
    assert out.attention_mask.tolist() == [[True, True, True], [True, False, False]]
    fixed = pad_rows(rows, 5, pad_id=2)
    assert fixed.input_ids.tolist() == [[5, 6, 7, 2, 2], [9, 2, 2, 2, 2]]
    assert fixed.attention_mask.dtype == torch.bool and fixed.input_ids.dtype == torch.long
    empty = pad_rows([], 4, pad_id=2)
    assert empty.input_ids.shape == (0, 4) and empty.attention_mask.shape == (0, 4)
