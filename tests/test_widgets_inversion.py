"""The real-image widget of notebook 06, driven headless by setting its controls' values."""
import io

import numpy as np
import pytest

from p2p_lab import shapes
from p2p_lab.widgets.inversion import UPLOAD, make_real_edit_ui, uploaded_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _scene(seed):
    scene = shapes.sample_scene(np.random.default_rng(seed))
    return shapes.render(scene)[0], shapes.caption(scene)


def _png(image) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_uploads_of_ipywidgets_7_and_8_are_read():
    img = _scene(0)[0]
    seven = {"scene.png": {"metadata": {"name": "scene.png"}, "content": _png(img)}}
    eight = (_file8(img),)
    for value in (seven, eight):
        assert np.array_equal(uploaded_image(value), img)
    assert uploaded_image(()) is None and uploaded_image({}) is None


def test_the_widget_inverts_once_per_image_and_re_edits_per_tau(shipped_pipe):
    images = {"scene 0": _scene(0), "scene 1": _scene(1)}
    ui = make_real_edit_ui(shipped_pipe, images, images["scene 1"][1], method="direct", num_inference_steps=4)
    assert ui.renders == 1 and ui.figure is not None and ui.inversion.method == "direct"
    from p2p_lab.p2p.inversion import METHODS

    assert list(ui.method.options) == list(METHODS)  # the registry's methods, a new one included
    first = ui.inversion
    ui.cross_tau.value = 0.3  # only the targets re-run
    assert ui.renders == 2 and ui.inversion is first and ui.result.from_cache
    ui.picture.value = "scene 1"  # a new image and caption: one new inversion
    assert ui.renders == 3 and ui.inversion is not first and ui.source.value == images["scene 1"][1]
    ui.picture.value = UPLOAD  # nothing uploaded yet: said, not raised
    assert "upload an image first" in ui.status.value
    # as the browser sets it (FileUpload.value is read-only from Python in ipywidgets 7)
    ui.upload.set_trait("value", {"mine.png": {"metadata": {"name": "mine.png"}, "content": _png(images["scene 0"][0])}}
                        if _is_ipywidgets_7() else (_file8(images["scene 0"][0]),))
    assert ui.inversion is not None and np.allclose(ui.inversion.image, images["scene 0"][0] / 255.0, atol=1e-6)


def _file8(image) -> dict:
    """One file as ipywidgets 8's FileUpload holds it."""
    import datetime

    data = _png(image)
    return {"name": "mine.png", "type": "image/png", "size": len(data), "content": memoryview(data),
            "last_modified": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)}


def _is_ipywidgets_7() -> bool:
    import ipywidgets

    return ipywidgets.__version__.startswith("7")
