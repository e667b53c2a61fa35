"""The engine's shortcuts give the same bytes as the general path.

When the source already stores each output rank's shard (metaseq parts -> native at the same tp,
native -> native at the same tp), shards are copied from the source files with pread and never
assembled; source tensors are read with pread rather than through their memory map; files are
written on parallel lanes; output goes through O_DIRECT or plain writes. None of that may change
a byte of the output.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import reshard
from reshard.pickles import MappedFile, safe_load_mapped
from reshard.safetensors_io import pread_into
from reshard.sources import open_source
from reshard.testing import metaseq_parts, random_state, write_metaseq_fsdp
from tests.reshard.cases import OPT350


def _files(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()}


@pytest.mark.parametrize("fixture", ["metaseq_fsdp", "metaseq_tp"])
def test_same_tp_shortcut_matches_assembled_path(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    src: Path = request.getfixturevalue(fixture)
    source = open_source(src)
    try:  # the shortcut is really taken for the sharded tensors
        assert source.tp == 2
        assert source.local_extents("layers.0.attn.qkv.weight", 1, 2) is not None
        assert source.local_extents("layers.0.attn.out.weight", 0, 2) is not None
        assert source.local_extents("layers.0.attn_norm.weight", 0, 2) is None  # replicated: compared
        assert source.local_extents("layers.0.attn.qkv.weight", 0, 4) is None  # other tp: assembled
    finally:
        source.close()
    reshard.convert(src, tmp_path / "direct", to="native", tp=2)
    # The general path: assemble every full tensor (tp 1), then cut it (tp 2 from a tp-1 source).
    reshard.convert(src, tmp_path / "tp1", to="native", tp=1)
    reshard.convert(tmp_path / "tp1", tmp_path / "assembled", to="native", tp=2)
    assert _files(tmp_path / "direct") == _files(tmp_path / "assembled")
    # native -> native at the same tp copies shards too, byte for byte.
    reshard.convert(tmp_path / "direct", tmp_path / "again", to="native")
    assert _files(tmp_path / "again") == _files(tmp_path / "direct")


def test_fsdp_opt350_shortcut_reads_back(tmp_path: Path) -> None:
    """Post-norm OPT with project_in/out, uneven FSDP padding: every tensor equals the generator's."""
    state = random_state(OPT350, seed=5)
    write_metaseq_fsdp(metaseq_parts(state, OPT350, 2), OPT350, tmp_path / "src", shards=3)
    reshard.convert(tmp_path / "src", tmp_path / "native", to="native")
    source = open_source(tmp_path / "native")
    try:
        for name, tensor in state.items():
            assert torch.equal(source.read(name), tensor), name
    finally:
        source.close()


def test_plain_writes_match_direct_io(metaseq_fsdp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reshard.convert(metaseq_fsdp, tmp_path / "direct_io", to="native")
    reshard.convert(metaseq_fsdp, tmp_path / "direct_io_hf", to="hf")
    monkeypatch.setenv("RESHARD_DIRECT_IO", "0")
    reshard.convert(metaseq_fsdp, tmp_path / "plain", to="native")
    reshard.convert(metaseq_fsdp, tmp_path / "plain_hf", to="hf")
    assert _files(tmp_path / "plain") == _files(tmp_path / "direct_io")
    assert _files(tmp_path / "plain_hf") == _files(tmp_path / "direct_io_hf")


def test_mapped_file_places_every_tensor(tmp_path: Path) -> None:
    tensors = {
        "a": torch.arange(1000, dtype=torch.float16),
        "b": torch.randn(7, 13),
        "c": torch.zeros(0),
        "nested": [torch.ones(3, dtype=torch.int64)],
    }
    torch.save(tensors, tmp_path / "t.pt")
    obj, mapped = safe_load_mapped(tmp_path / "t.pt")
    assert mapped
    located = MappedFile.locate(tmp_path / "t.pt", obj)
    assert located is not None
    try:
        for tensor in (obj["a"], obj["b"], obj["a"][100:300], obj["nested"][0]):
            extent = located.extent(tensor)
            assert extent is not None
            back = pread_into([extent], torch.empty_like(tensor), "test")
            assert torch.equal(back, tensor)
        assert located.extent(obj["b"].t()) is None  # not contiguous: read through the view instead
        assert located.extent(torch.ones(3)) is None  # not in the file
    finally:
        located.close()
    # Placed from a subset of the file's tensors too (a checkpoint's model without its optimizer).
    partial = MappedFile.locate(tmp_path / "t.pt", {"b": obj["b"]})
    assert partial is not None
    try:
        extent = partial.extent(obj["b"])
        assert extent is not None and torch.equal(pread_into([extent], torch.empty_like(obj["b"]), "test"), obj["b"])
    finally:
        partial.close()
