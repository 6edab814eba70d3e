"""benchmarks/reweight_finetune.py: a smoke run fine-tunes a copy of the shipped model (never data/),
keeps its autoencoder and tokenizer, and measures both models."""
import hashlib
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from p2p_lab.model import SHIPPED_MODEL

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _digests(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_quick_run_fine_tunes_a_copy_and_measures_both(tmp_path, capsys, load_benchmark):
    mod = load_benchmark("reweight_finetune")
    shipped_before = _digests(Path(SHIPPED_MODEL))
    report = mod.main(["--quick", "--out", str(tmp_path), "--threads", "1"])
    assert _digests(Path(SHIPPED_MODEL)) == shipped_before  # data/ untouched
    export = tmp_path / "export"
    assert (export / "done.json").exists()
    weights = lambda folder, part: load_file(next((folder / part).glob("*.safetensors")))  # noqa: E731
    vae, vae0 = weights(export, "vae"), weights(Path(SHIPPED_MODEL), "vae")
    assert vae.keys() == vae0.keys() and all((vae[k] == vae0[k]).all() for k in vae)  # the autoencoder kept
    for name in ("vocab.json", "merges.txt"):  # and the tokenizer
        assert (export / "tokenizer" / name).read_bytes() == (Path(SHIPPED_MODEL) / "tokenizer" / name).read_bytes()
    tuned, shipped = weights(export, "unet"), weights(Path(SHIPPED_MODEL), "unet")
    assert tuned.keys() == shipped.keys()
    assert any(not (tuned[k] == shipped[k]).all() for k in tuned)  # four steps of training moved it
    assert set(report["models"]) == {"shipped", "fine-tuned"}
    for r in report["models"].values():
        assert set(r["reweight"]) == set(mod.READS)
        assert all(len(c) == len(mod.SCALES) for c in r["reweight"].values())
        assert 0.0 <= r["p2p"]["p2p"]["edit_success"] <= 1.0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["models"].keys() == report["models"].keys()
