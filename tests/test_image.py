"""Bad and unusual source images: converted, or refused with one clear line."""

import io

import numpy as np
import pytest
from PIL import Image

from fastssl import FastSSLError
from fastssl.image import load_image


def save(tmp_path, img, name, **kw):
    p = tmp_path / name
    img.save(p, **kw)
    return p


def test_missing_directory_and_non_image(tmp_path):
    with pytest.raises(FastSSLError, match="not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(FastSSLError, match="directory"):
        load_image(tmp_path)
    txt = tmp_path / "notes.jpg"
    txt.write_text("this is not a JPEG")
    with pytest.raises(FastSSLError, match="not an image"):
        load_image(txt)


def test_truncated_file_is_reported_as_corrupt(tmp_path, rng):
    arr = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(FastSSLError, match="corrupt or truncated"):
        load_image(p)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1", "YCbCr"])
def test_colour_modes_become_rgb(tmp_path, rng, mode):
    rgb = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    img = rgb.convert(mode)
    ext = {"CMYK": "tiff", "YCbCr": "jpg"}.get(mode, "png")
    out = load_image(save(tmp_path, img, f"x.{ext}"))
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8
    if mode == "RGBA":
        np.testing.assert_array_equal(out, np.asarray(rgb))  # alpha dropped, colour kept
    if mode == "L":
        assert (out[..., 0] == out[..., 1]).all()


def test_sixteen_bit_grey_is_scaled_by_its_full_range(tmp_path):
    a = np.array([[0, 257, 65535, 32768]], dtype=np.uint16)
    img = Image.fromarray(a)
    assert img.mode.startswith("I;16")
    out = load_image(save(tmp_path, img, "g16.png"))
    assert out[0, :, 0].tolist() == [0, 1, 255, 128]


def test_float_images_are_refused(tmp_path):
    img = Image.fromarray(np.zeros((8, 8), np.float32))
    with pytest.raises(FastSSLError, match="floating-point"):
        load_image(save(tmp_path, img, "f.tiff"))


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif.tobytes(), quality=95)
    out = load_image(p)
    assert out.shape == (40, 20, 3)
    assert out[:15].mean() > 200 and out[25:].mean() < 50  # the white half is now on top


def test_default_image_is_builtin():
    out = load_image(None)
    assert out.shape == (600, 512, 3)
