"""Round trips between every layout: bit-exact weights, transformers parity on the logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import reshard
import training
from reshard.sources import open_source
from reshard.testing import metaseq_parts, random_state, write_metaseq_fsdp, write_metaseq_tp
from reshard.verify import model_from_source
from tests.reshard.cases import GLAM, LLAMA, MIXTRAL, OPT, OPT350


def _full_state(path: Path) -> dict[str, torch.Tensor]:
    source = open_source(path)
    try:
        return {name: source.read(name) for name in source.layout.names}
    finally:
        source.close()


def _write_native(state: dict[str, torch.Tensor], cfg: training.ModelConfig, folder: Path, tp: int) -> Path:
    reshard.save_state(state, cfg, folder, to="native", tp=tp)
    return folder


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            out.update({k: handle.get_tensor(k) for k in handle.keys()})
    return out


def test_fsdp_unshards_to_the_generating_state(metaseq_fsdp: Path, opt_state: dict[str, torch.Tensor]) -> None:
    # Uneven padding is really exercised: some shard of some flat param is padded, some is not.
    paddings = []
    for s in range(3):
        shard = torch.load(metaseq_fsdp / f"checkpoint_last-model_part-0-shard{s}.pt", weights_only=False)
        paddings.append([m["params"]["flat_param_0"]["padding"] for m in shard["shard_metadata"]["param_metadata"]])
    assert not any(paddings[0]) and all(paddings[2])
    state = _full_state(metaseq_fsdp)
    assert state.keys() == opt_state.keys()
    for name, tensor in opt_state.items():
        assert torch.equal(state[name], tensor), name


def test_fsdp_to_native_to_hf_matches_transformers(metaseq_fsdp: Path, tmp_path: Path) -> None:
    import transformers

    reshard.convert(metaseq_fsdp, tmp_path / "native", to="native")
    reshard.convert(tmp_path / "native", tmp_path / "hf", to="hf")
    ids = torch.randint(0, OPT.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    source = open_source(metaseq_fsdp)
    ours = model_from_source(source)
    source.close()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        diff = (theirs(ids).logits - ours(ids)).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize("cfg", [OPT, OPT350, LLAMA, MIXTRAL, GLAM], ids=lambda c: c.name)
def test_tp_1_2_4_1_round_trip_is_bit_exact(cfg: training.ModelConfig, tmp_path: Path) -> None:
    state = random_state(cfg, seed=2)
    if cfg.family == "opt":
        write_metaseq_tp(metaseq_parts(state, cfg, 1), cfg, tmp_path / "src")
        reshard.convert(tmp_path / "src", tmp_path / "tp1", to="native", tp=1)
    else:
        _write_native(state, cfg, tmp_path / "tp1", tp=1)
    reshard.convert(tmp_path / "tp1", tmp_path / "tp2", to="native", tp=2)
    reshard.convert(tmp_path / "tp2", tmp_path / "tp4", to="native", tp=4)
    reshard.convert(tmp_path / "tp4", tmp_path / "back", to="native", tp=1)
    first, back = _safetensors(tmp_path / "tp1"), _safetensors(tmp_path / "back")
    assert first.keys() == back.keys() == state.keys()
    for name in first:
        assert torch.equal(first[name], back[name]), name
        assert torch.equal(first[name], state[name].to(first[name].dtype)), name
    # Byte-identical files, not only equal tensors.
    one = (tmp_path / "tp1" / "model-rank-00000-of-00001.safetensors").read_bytes()
    assert one == (tmp_path / "back" / "model-rank-00000-of-00001.safetensors").read_bytes()
    meta = json.loads((tmp_path / "tp4" / "config.json").read_text())
    assert meta["format"] == "openrelease-native" and meta["tp_size"] == 4
    assert meta["vocab_padding"]["padded_vocab_size"] == cfg.padded_vocab_size


@pytest.mark.parametrize("kind", ["opt", "llama", "mixtral"])
def test_hf_native_hf_round_trip_is_bit_exact(hf_checkpoints: dict[str, Path], kind: str, tmp_path: Path) -> None:
    src = hf_checkpoints[kind]
    tp = 2
    reshard.convert(src, tmp_path / "native", to="native", tp=tp)
    reshard.convert(tmp_path / "native", tmp_path / "hf", to="hf")
    before, after = _safetensors(src), _safetensors(tmp_path / "hf")
    if kind == "opt":  # transformers may store the tied head; it is checked equal and re-tied
        before.pop("lm_head.weight", None)
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert (tmp_path / "native" / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    # transformers loads our output and agrees with itself on the source.
    import transformers

    ids = torch.randint(0, 100, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = transformers.AutoModelForCausalLM.from_pretrained(src).eval()(ids).logits
        out = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()(ids).logits
    assert torch.equal(ref, out)


def test_pytorch_model_bin_and_sharded_hf_output(hf_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    src = hf_checkpoints["llama"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_bytes((src / "config.json").read_bytes())
    torch.save(_safetensors(src), bin_dir / "pytorch_model.bin")
    assert reshard.inspect(bin_dir).format == "hf"
    # Small shards: the output is split with an index, and reads back through the index.
    reshard.convert(bin_dir, tmp_path / "sharded", to="hf", max_shard_bytes=20_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    reshard.convert(tmp_path / "sharded", tmp_path / "native", to="native", tp=2)
    back = _safetensors(tmp_path / "sharded")
    for name, tensor in _safetensors(src).items():
        assert torch.equal(back[name], tensor), name


def test_metaseq_tp_output_reads_back_and_keeps_kvq(
    metaseq_tp: Path, opt_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    reshard.convert(metaseq_tp, tmp_path / "n4", to="native", tp=4)
    reshard.convert(tmp_path / "n4", tmp_path / "ms", to="metaseq", tp=2)
    # Same tensors as the generator's parts (per-part K, V, Q), part by part.
    expected = metaseq_parts(opt_state, OPT, 2)
    for p in range(2):
        part = torch.load(tmp_path / "ms" / f"reshard-model_part-{p}.pt", weights_only=True, mmap=True)
        assert part["model"].keys() - {"decoder.version"} == expected[p].keys()
        for name, tensor in expected[p].items():
            assert torch.equal(part["model"][name], tensor), (p, name)
    assert reshard.inspect(tmp_path / "ms").format == "metaseq"


def test_dtype_conversion_and_fsdp_opt350(tmp_path: Path) -> None:
    state = random_state(OPT350, seed=4)
    write_metaseq_fsdp(metaseq_parts(state, OPT350, 2), OPT350, tmp_path / "src", shards=3)
    result = reshard.convert(tmp_path / "src", tmp_path / "bf16", to="native", dtype="bf16")
    assert result.dtype == "bfloat16" and result.tp == 2
    back = _full_state(tmp_path / "bf16")
    for name, tensor in state.items():
        assert torch.equal(back[name], tensor.to(torch.bfloat16)), name
    assert reshard.inspect(tmp_path / "src").architecture["word_embed_proj_dim"] == 16


def test_native_loader_at_tp2_matches_tp1(metaseq_fsdp: Path, tmp_path: Path) -> None:
    reshard.convert(metaseq_fsdp, tmp_path / "native", to="native", tp=2)
    result = reshard.verify(tmp_path / "native", against=metaseq_fsdp)  # spawns 2 gloo ranks
    assert result.ok and result.numerics is not None and result.numerics["tp"] == 2
    assert result.numerics["max_abs_diff"] <= 1e-5
    with pytest.raises(reshard.UsageError, match="tp=2"):
        reshard.load_native(tmp_path / "native")


def test_omegaconf_cfg_is_read_without_omegaconf(
    tmp_path: Path, opt_state: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cfg pickled as omegaconf DictConfig (hydra) loads through the stand-ins as a dict."""
    import sys
    import types

    fake = {
        name: types.ModuleType(name)
        for name in ("omegaconf", "omegaconf.dictconfig", "omegaconf.nodes", "omegaconf.base")
    }

    class DictConfig:
        def __init__(self, content: dict) -> None:
            self._metadata = ContainerMetadata()
            self._content = {k: v if isinstance(v, DictConfig) else AnyNode(v) for k, v in content.items()}

        def __getstate__(self) -> dict:
            return dict(self.__dict__)

        def __setstate__(self, state: dict) -> None:
            self.__dict__.update(state)

    class AnyNode:
        def __init__(self, value: object) -> None:
            self._val = value

    class ContainerMetadata:
        def __init__(self) -> None:
            self.optional = True

    for cls, module in (
        (DictConfig, "omegaconf.dictconfig"),
        (AnyNode, "omegaconf.nodes"),
        (ContainerMetadata, "omegaconf.base"),
    ):
        cls.__module__ = module
        cls.__qualname__ = cls.__name__
        setattr(fake[module], cls.__name__, cls)
    for name, module in fake.items():
        monkeypatch.setitem(sys.modules, name, module)
    from reshard import metaseq

    cfg = metaseq.cfg_from_config(OPT, 1)
    parts = metaseq_parts(opt_state, OPT, 1)
    (tmp_path / "src").mkdir()
    torch.save(
        {
            "model": {**parts[0], "decoder.version": torch.tensor([3.0])},
            "cfg": DictConfig({"model": DictConfig(cfg["model"])}),
        },
        tmp_path / "src" / "reshard-model_part-0.pt",
    )
    for name in fake:
        monkeypatch.delitem(sys.modules, name)
    info = reshard.inspect(tmp_path / "src")
    assert info.architecture["n_layer"] == OPT.n_layer and info.architecture_from == "checkpoint"
