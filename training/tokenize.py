"""``python -m training tokenize INPUT --tokenizer DIR --out FILE``: text to a token file.

Input is JSONL (one ``{"text": "..."}`` object per line; other keys are ignored) or plain text
(documents separated by blank lines). Each document is encoded as inference encodes a prompt
(the tokenizer's own special tokens, e.g. a BOS) and followed by the EOS token. A malformed line
(bad JSON, no string "text", invalid UTF-8) stops the run with its line number and no output
file is left behind: a dataset is used whole or not at all.

The tokenizer is read with the ``tokenizers`` library from a checkpoint directory:
``tokenizer.json``, or GPT-2 style ``vocab.json`` + ``merges.txt`` (what OPT shipped).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from training.data import DataError, TokenFileWriter, token_dtype

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_BATCH_DOCS = 512


class TokenizeError(DataError):
    """The input or the tokenizer cannot be used; ``line`` is the 1-based input line at fault."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


@dataclass
class LoadedTokenizer:
    inner: Any  # tokenizers.Tokenizer
    eos_token_id: int | None
    vocab_size: int
    path: Path


def _json_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TokenizeError(f"{path}: unreadable ({exc})") from None
    return value if isinstance(value, dict) else {}


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "</s>", ...} as transformers writes AddedToken
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_tokenizer(path: str | os.PathLike[str]) -> LoadedTokenizer:
    """The tokenizer of a checkpoint directory and its EOS id (from config.json's eos_token_id,
    else tokenizer_config.json / special_tokens_map.json's eos_token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    path = Path(path)
    if not path.is_dir():
        raise TokenizeError(f"--tokenizer {path}: not a directory; pass the checkpoint directory holding the tokenizer")
    if (path / "tokenizer.json").is_file():
        try:
            inner = Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as exc:  # the library raises plain Exception for malformed files
            raise TokenizeError(f"{path / 'tokenizer.json'}: unreadable tokenizer ({exc})") from None
    elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        try:
            inner = Tokenizer(models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt")))
        except Exception as exc:
            raise TokenizeError(f"{path}: unreadable vocab.json / merges.txt ({exc})") from None
        inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        inner.decoder = decoders.ByteLevel()
    else:
        raise TokenizeError(f"--tokenizer {path}: no tokenizer.json (or vocab.json + merges.txt) in the directory")

    eos = _json_file(path / "config.json").get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    if eos is None:
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            text = _token_text(_json_file(path / name).get("eos_token"))
            if text is not None and inner.token_to_id(text) is not None:
                eos = inner.token_to_id(text)
                break
    return LoadedTokenizer(inner, eos, int(inner.get_vocab_size(with_added_tokens=True)), path)


def _documents(path: Path, kind: str) -> Iterator[tuple[str, int]]:
    """(text, bytes read so far) per document; raises TokenizeError naming the bad line."""
    with open(path, "rb") as handle:
        if kind == "jsonl":
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    raise TokenizeError(f"{path}:{number}: not valid UTF-8 ({exc.reason})", line=number) from None
                except json.JSONDecodeError as exc:
                    raise TokenizeError(f"{path}:{number}: not valid JSON ({exc.msg})", line=number) from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise TokenizeError(
                        f'{path}:{number}: expected an object with a string "text" field, got '
                        f"{type(record).__name__ if not isinstance(record, dict) else sorted(record)[:5]}",
                        line=number,
                    )
                yield record["text"], handle.tell()
            return
        lines: list[str] = []
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TokenizeError(f"{path}:{number}: not valid UTF-8 ({exc.reason})", line=number) from None
            if line.strip():
                lines.append(line.rstrip("\r\n"))
            elif lines:
                yield "\n".join(lines), handle.tell()
                lines = []
        if lines:
            yield "\n".join(lines), handle.tell()


class _Progress:
    """Bytes of input read, documents and tokens written; a bar on a terminal, plain lines
    (every few seconds) otherwise."""

    def __init__(self, total_bytes: int, stream: TextIO | None = None) -> None:
        self.total, self.stream = max(total_bytes, 1), stream or sys.stderr
        self.started = self._last = time.monotonic()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, done_bytes: int, docs: int, tokens: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < (0.2 if self._tty else 5.0):
            return
        self._last = now
        frac = min(done_bytes / self.total, 1.0)
        elapsed = max(now - self.started, 1e-9)
        line = (
            f"tokenize [{'#' * int(frac * 30)}{'.' * (30 - int(frac * 30))}] {frac * 100:5.1f}% "
            f"{docs:,} docs {tokens:,} tokens {tokens / elapsed:,.0f} tok/s {elapsed:,.1f}s"
        )
        self.stream.write(("\r" + line + ("\n" if final else "")) if self._tty else line + "\n")
        self.stream.flush()


def tokenize_file(
    input_path: str | os.PathLike[str],
    *,
    tokenizer: str | os.PathLike[str],
    out: str | os.PathLike[str],
    input_format: str = "auto",
    progress: bool = True,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> dict[str, Any]:
    """Write the token file; returns its header. Raises TokenizeError (nothing written) on a
    malformed line. ``on_progress(bytes_read, docs, tokens)`` is called after every batch of
    documents (a job's progress row); an exception from it stops the run, leaving no file."""
    input_path, out = Path(input_path), Path(out)
    if not input_path.is_file():
        raise TokenizeError(f"INPUT {input_path}: no such file")
    if input_format == "auto":
        input_format = "jsonl" if input_path.suffix.lower() in JSONL_SUFFIXES else "text"
    if input_format not in ("jsonl", "text"):
        raise TokenizeError(f"--format {input_format!r}: expected auto, jsonl or text")
    loaded = load_tokenizer(tokenizer)
    writer = TokenFileWriter(
        out,
        dtype=token_dtype(loaded.vocab_size),
        metadata={
            "eos_token_id": loaded.eos_token_id,
            "vocab_size": loaded.vocab_size,
            "tokenizer": str(loaded.path),
            "source": input_path.name,
            "input_format": input_format,
        },
    )
    bar = _Progress(input_path.stat().st_size) if progress else None
    docs = 0
    try:
        batch: list[str] = []

        def flush() -> None:
            for encoding in loaded.inner.encode_batch(batch, add_special_tokens=True):
                ids = list(encoding.ids)
                if loaded.eos_token_id is not None:
                    ids.append(loaded.eos_token_id)
                writer.add(ids)
            batch.clear()

        for text, read in _documents(input_path, input_format):
            batch.append(text)
            docs += 1
            if len(batch) >= _BATCH_DOCS:
                flush()
                if bar is not None:
                    bar(read, docs, writer.num_tokens)
                if on_progress is not None:
                    on_progress(read, docs, writer.num_tokens)
        if batch:
            flush()
        if docs == 0:
            raise TokenizeError(f"INPUT {input_path}: no documents found")
        header = writer.close()
    except BaseException:
        writer.abort()
        raise
    if bar is not None:
        bar(input_path.stat().st_size, docs, int(header["num_tokens"]), final=True)
    return header


__all__ = ["LoadedTokenizer", "TokenizeError", "load_tokenizer", "tokenize_file"]
