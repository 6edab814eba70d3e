"""Home 2: the package installed from its wheel (not editable) carries the shipped model and loads
it offline from any folder. The full fresh environment (Colab-like, every notebook) is a step of
.ci/run; these tests build the wheel and the sdist and check what they hold, here, in seconds."""
import hashlib
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "data" / "shapes-ldm"


def _pip(*args, cwd=ROOT):
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, env=env, check=True,
                   capture_output=True, text=True)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _model_files() -> dict[str, str]:
    return {p.relative_to(MODEL).as_posix(): _digest(p.read_bytes())
            for p in MODEL.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _pip("wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(out), str(ROOT))
    (found,) = out.glob("p2p_lab-*.whl")
    return found


def test_wheel_carries_the_shipped_model_byte_for_byte(wheel):
    prefix = "p2p_lab/data/shapes-ldm/"
    with zipfile.ZipFile(wheel) as z:
        held = {n[len(prefix):]: _digest(z.read(n)) for n in z.namelist()
                if n.startswith(prefix) and not n.endswith("/")}
        names = z.namelist()
    assert held == _model_files()
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "data/", "notebooks/"))]
    assert wheel.stat().st_size < 10 * 2 ** 20, f"the wheel is {wheel.stat().st_size} bytes"


def test_sdist_carries_the_model_and_builds_a_wheel_with_it(tmp_path):
    from setuptools import build_meta

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        name = build_meta.build_sdist(str(tmp_path / "sdist"))
    finally:
        os.chdir(cwd)
    sdist = tmp_path / "sdist" / name
    with tarfile.open(sdist) as t:
        top = t.getnames()[0].split("/")[0]
        held = {m.name[len(top) + len("/data/shapes-ldm/"):] for m in t.getmembers()
                if m.isfile() and m.name.startswith(f"{top}/data/shapes-ldm/")}
    assert held == set(_model_files())
    _pip("wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(tmp_path / "w"), str(sdist))
    (built,) = (tmp_path / "w").glob("*.whl")
    with zipfile.ZipFile(built) as z:
        assert "p2p_lab/data/shapes-ldm/unet/diffusion_pytorch_model.safetensors" in z.namelist()


INSTALLED_CHECK = textwrap.dedent("""
    import socket, sys
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")
    socket.socket.connect = refuse
    import numpy as np, torch
    import p2p_lab
    from p2p_lab.model import SHIPPED_MODEL, load_pipeline
    site = sys.argv[1]
    assert p2p_lab.__file__.startswith(site), p2p_lab.__file__
    assert str(SHIPPED_MODEL).startswith(site), SHIPPED_MODEL
    pipe = load_pipeline(device="cpu")
    g = torch.Generator("cpu").manual_seed(3)
    image = pipe("a red circle on a blue background", num_inference_steps=4, generator=g,
                 output_type="np").images
    np.save(sys.argv[2], image)
""")


def test_installed_wheel_loads_the_model_from_any_folder_offline(wheel, tmp_path, shipped_pipe):
    import numpy as np
    import torch

    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    _pip("install", "--no-deps", "-q", "--target", str(site), str(wheel))
    out = tmp_path / "image.npy"
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-c", INSTALLED_CHECK, str(site), str(out)],
                         cwd=elsewhere, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    # the reference: diffusers' own pipeline call on the checkout's copy of the model
    g = torch.Generator("cpu").manual_seed(3)
    expected = shipped_pipe("a red circle on a blue background", num_inference_steps=4,
                            generator=g, output_type="np").images
    assert np.allclose(np.load(out), expected, atol=1e-5)
