"""Bad and unusual source images: converted, or refused with one clear line."""

import io
import os

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


def test_default_image_is_the_builtin_photo_decoded_as_rgb():
    from fastssl.image import default_image_path

    out = load_image(None)
    with Image.open(default_image_path()) as im:
        want = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(out, want)  # same pixels, RGB order, no EXIF surprise
    assert out.std() > 20  # a real photo, not a blank stand-in


def test_paper_photos_download_once_and_are_checked(tmp_path, monkeypatch, http_dir):
    """``paper:NAME`` fetches the paper's photo from the authors' repository into the cache
    with its SHA-256 checked (here from a local server holding stand-ins with the expected
    checksums patched in)."""
    import hashlib

    import fastssl.image as image
    from fastssl.errors import FastSSLError
    from fastssl.image import PAPER_IMAGES, load_image

    served, base = http_dir
    (served / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    table = {}
    for name, (rel, _) in PAPER_IMAGES.items():
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(served / rel, format="PNG")
        table[name] = (rel, hashlib.sha256((served / rel).read_bytes()).hexdigest())

    monkeypatch.setenv("FASTSSL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(image, "PAPER_REPO", base)
    monkeypatch.setattr(image, "PAPER_IMAGES", table)
    a = load_image("paper:bridge")
    assert a.shape == (40, 50, 3)
    np.testing.assert_array_equal(a, np.asarray(Image.open(served / table["bridge"][0]).convert("RGB")))
    assert sorted(os.listdir(tmp_path / "cache" / "paper-images")) == ["sf.png"]
    (served / table["bridge"][0]).unlink()  # the second use reads the cache
    np.testing.assert_array_equal(load_image("paper:bridge"), a)
    # a download whose checksum differs is refused and leaves nothing
    monkeypatch.setattr(image, "PAPER_IMAGES", {**table, "animals": (table["animals"][0], "0" * 64)})
    with pytest.raises(FastSSLError, match="corrupt"):
        load_image("paper:animals")
    assert not (tmp_path / "cache" / "paper-images" / "animals.png").exists()
    with pytest.raises(FastSSLError, match="unknown paper image"):
        load_image("paper:nope")
