"""Text representation: WordPiece tokenizer, word + position + segment embeddings, BERT-family encoders.

Importing this package registers the ``bert`` member of :class:`vlp.text.config.TextConfig`.
"""

from vlp.text.embeddings import TextEmbeddings
from vlp.text.encoder import BertTextConfig, BertTextEncoder
from vlp.text.tokenized import TokenizedText
from vlp.text.tokenizer import Tokenizer

__all__ = ["BertTextConfig", "BertTextEncoder", "TextEmbeddings", "TokenizedText", "Tokenizer"]
