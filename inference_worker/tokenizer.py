"""The checkpoint's tokenizer, read with the ``tokenizers`` library from the checkpoint directory.

Two layouts: ``tokenizer.json`` (the whole pipeline in one file, what transformers' fast
tokenizers save), or GPT-2 style ``vocab.json`` + ``merges.txt`` (what OPT shipped), read as a
byte-level BPE. Nothing is fetched from a hub.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer

TOKENIZER_FILES = ("tokenizer.json", "vocab.json + merges.txt")

# Tokens of the prompt's tail decoded together with the generated ones, so that a decoder that
# drops a leading space at the start of a text (SentencePiece's "▁") sees the real context.
_PREFIX_TOKENS = 6


class TokenizerError(ValueError):
    """The checkpoint directory holds no usable tokenizer."""


class Tokenizer:
    def __init__(self, inner: _HFTokenizer, *, bos_token_id: int | None = None, add_bos: bool = False) -> None:
        self.inner = inner
        self.bos_token_id = bos_token_id
        # A post-processor in tokenizer.json adds specials itself; add_bos is for vocab.json
        # layouts whose tokenizer_config.json asks for a BOS.
        self.add_bos = add_bos and bos_token_id is not None
        self._token_texts: dict[int, str] = {}
        self._anchor_id: int | None = -1  # -1: not looked for yet

    @classmethod
    def from_dir(
        cls, path: str | Path, *, bos_token_id: int | None = None, special_ids: tuple[int | None, ...] = ()
    ) -> Tokenizer:
        """``special_ids`` (the config's BOS/EOS/pad) are marked special in a vocab.json layout, which
        cannot say so itself, so they are left out of decoded text."""
        path = Path(path)
        tokenizer_json = path / "tokenizer.json"
        vocab, merges = path / "vocab.json", path / "merges.txt"
        if tokenizer_json.is_file():
            try:
                return cls(_HFTokenizer.from_file(str(tokenizer_json)), bos_token_id=bos_token_id)
            except Exception as exc:  # the library raises plain Exception for malformed files
                raise TokenizerError(f"{tokenizer_json}: unreadable tokenizer ({exc})") from None
        if vocab.is_file() and merges.is_file():
            try:
                bpe = models.BPE.from_file(str(vocab), str(merges))
            except Exception as exc:
                raise TokenizerError(f"{vocab} / {merges}: unreadable BPE files ({exc})") from None
            inner = _HFTokenizer(bpe)
            inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            inner.decoder = decoders.ByteLevel()
            specials = [inner.id_to_token(i) for i in {bos_token_id, *special_ids} if i is not None]
            inner.add_special_tokens([AddedToken(t, special=True) for t in specials if t is not None])
            return cls(inner, bos_token_id=bos_token_id, add_bos=_config_adds_bos(path))
        missing = "merges.txt" if vocab.is_file() else "vocab.json" if merges.is_file() else "tokenizer.json"
        raise TokenizerError(
            f"{path / missing} not found: the engine reads the tokenizer from the checkpoint directory "
            f"({' or '.join(TOKENIZER_FILES)}); copy the model's tokenizer files next to config.json"
        )

    @property
    def vocab_size(self) -> int:
        return int(self.inner.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        ids = list(self.inner.encode(text, add_special_tokens=True).ids)
        if self.add_bos and (not ids or ids[0] != self.bos_token_id):
            ids.insert(0, int(self.bos_token_id))  # type: ignore[arg-type]
        return ids

    def decode(self, ids: list[int]) -> str:
        return str(self.inner.decode(ids, skip_special_tokens=True))

    def token_text(self, token_id: int, *, first: bool = False) -> str:
        """One token's text as it reads inside a text (logprobs): " the", not "the". Decoders
        that drop a leading space at the start of a text (SentencePiece's "▁") would lose it
        when decoding the token alone, so it is decoded after an anchor token and cut off.
        ``first``: the token starts the text, and reads as it does there."""
        if first:
            return str(self.inner.decode([token_id], skip_special_tokens=False))
        cached = self._token_texts.get(token_id)
        if cached is None:
            anchor = self._anchor()
            if anchor is None:
                cached = str(self.inner.decode([token_id], skip_special_tokens=False))
            else:
                head = str(self.inner.decode([anchor], skip_special_tokens=False))
                both = str(self.inner.decode([anchor, token_id], skip_special_tokens=False))
                cached = both[len(head) :] if both.startswith(head) else both
            self._token_texts[token_id] = cached
        return cached

    def _anchor(self) -> int | None:
        if self._anchor_id == -1:
            self._anchor_id = None
            for token_id in sorted(self.inner.get_vocab().values()):
                text = str(self.inner.decode([token_id], skip_special_tokens=True))
                if text.strip() and text.isalnum():
                    self._anchor_id = token_id
                    break
        return self._anchor_id

    def detokenizer(self, prompt_ids: list[int]) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, prompt_ids[-_PREFIX_TOKENS:])


@dataclass
class IncrementalDetokenizer:
    """Turns generated tokens into text one token at a time, without decoding the whole output
    each step and without emitting half a UTF-8 character (byte-level BPE splits characters
    across tokens: until the rest arrives the decoder shows U+FFFD, which is held back)."""

    tokenizer: Tokenizer
    ids: list[int]
    prefix_offset: int = 0
    read_offset: int = field(init=False)

    def __post_init__(self) -> None:
        self.read_offset = len(self.ids)

    def push(self, token_id: int) -> str:
        """Text newly completed by ``token_id`` (possibly "")."""
        self.ids.append(token_id)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.tokenizer.decode(self.ids[self.prefix_offset :])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return full[len(prefix) :]


def _config_adds_bos(path: Path) -> bool:
    config = path / "tokenizer_config.json"
    if not config.is_file():
        return False
    try:
        return bool(json.loads(config.read_text()).get("add_bos_token", False))
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
