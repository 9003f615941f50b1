"""DALL-E's text side: a BPE tokenizer (Hugging Face `tokenizers`) trained locally on the captions, lowercased,
at most 256 tokens per caption, id 0 the padding (the transformer turns it into one padding token per position)."""
import torch

from fastar.models.checks import check_values

MAX_TEXT_LEN = 256  # the paper's text budget
PAD, UNK = "[PAD]", "[UNK]"


class TextTokenizer:
    """encode(captions) -> (B, text_len) int64, padded with 0; decode(ids) -> captions."""

    def __init__(self, tokenizer, text_len):
        if not 1 <= text_len <= MAX_TEXT_LEN:
            raise ValueError(f"TextTokenizer: text_len must be in [1, {MAX_TEXT_LEN}], got {text_len}")
        self.tokenizer, self.text_len = tokenizer, text_len

    @classmethod
    def train(cls, captions, vocab_size, text_len):
        """BPE on `captions` (no download): lowercase normalizer, whitespace pre-tokenizer, [PAD] = 0."""
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
        tok = Tokenizer(models.BPE(unk_token=UNK))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator(captions, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK],
                                                               show_progress=False))
        return cls(tok, text_len)

    @classmethod
    def from_str(cls, json, text_len):
        from tokenizers import Tokenizer
        return cls(Tokenizer.from_str(json), text_len)

    def to_str(self):
        return self.tokenizer.to_str()

    @property
    def vocab_size(self):
        return self.tokenizer.get_vocab_size()

    def encode(self, captions):
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError(f"TextTokenizer.encode: captions must be a list of strings, got {captions!r:.80}")
        ids = torch.zeros(len(captions), self.text_len, dtype=torch.long)
        for i, enc in enumerate(self.tokenizer.encode_batch(list(captions))):
            if len(enc.ids) > self.text_len:
                raise ValueError(f"TextTokenizer.encode: text {i} ({captions[i][:40]!r}...) has {len(enc.ids)} "
                                 f"tokens, more than text_len={self.text_len}")
            ids[i, :len(enc.ids)] = torch.tensor(enc.ids, dtype=torch.long)
        return ids

    def decode(self, ids):
        """ids (B, T) token ids -> B captions (padding dropped); an id past the vocabulary is an error, not a gap."""
        ids = torch.as_tensor(ids)
        if ids.dim() != 2 or ids.is_floating_point():
            raise ValueError(f"TextTokenizer.decode: ids must be (B, T) integer ids, got {ids.dtype} "
                             f"{tuple(ids.shape)}")
        V = self.vocab_size
        check_values("TextTokenizer.decode", ids, 0, V - 1, f"ids must be in [0, {V})")
        return [self.tokenizer.decode([t for t in row.tolist() if t != 0]) for row in ids]
