"""benchmarks/carry.py: DALI cut into parts small enough for a device call, and put back together."""

import importlib.util
import json
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def carry():
    spec = importlib.util.spec_from_file_location("carry", ROOT / "benchmarks" / "carry.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_wheel(path: Path, rng) -> dict[str, bytes]:
    """A wheel laid out like DALI's: bindings for several Pythons, headers, shared libraries."""
    files = {
        "nvidia/dali/__init__.py": b"__version__ = 'fake'\n",
        "nvidia/dali/backend_impl.cpython-311-x86_64-linux-gnu.so": rng.bytes(3000),
        "nvidia/dali/backend_impl.cpython-312-x86_64-linux-gnu.so": rng.bytes(3000),
        "nvidia/dali/backend_impl.cpython-310-x86_64-linux-gnu.so": rng.bytes(3000),
        "nvidia/dali/backend_impl.cpython-314t-x86_64-linux-gnu.so": rng.bytes(3000),
        "nvidia/dali/include/dali/core.h": b"// header\n" * 50,
        "nvidia/dali/libdali_operators.so": rng.bytes(40000),
        "nvidia/dali/.libs/libavcodec-0c04e3c0.so.63": rng.bytes(9000),
        "nvidia_dali_fake-1.0.dist-info/METADATA": b"Name: nvidia-dali-fake\n",
        "nvidia_dali_fake-1.0.dist-info/RECORD": b"...\n",
    }
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o755 if name.endswith(".so") else 0o644) << 16
            z.writestr(info, data)
    return files


def test_pack_stash_unpack_round_trip(carry, tmp_path, rng):
    files = _fake_wheel(tmp_path / "dali.whl", rng)
    small = tmp_path / "tiny-1.0-py3-none-any.whl"
    small.write_bytes(b"not installed in this test")
    man = carry.pack(tmp_path / "dali.whl", [small], tmp_path / "carry", chunk_mib=20000 / 2**20)
    parts = man["parts"]
    assert len(parts) >= 2 and all(p["bytes"] <= 20000 for p in parts)  # random bytes do not compress
    assert man["dali_tar_xz"]["dropped"] == 4  # headers, two other Pythons' bindings, RECORD
    k = len(parts)
    assert sorted(p.name for p in (tmp_path / "carry").iterdir()) == sorted(str(i) for i in range(1, k + 1))
    assert (tmp_path / "carry" / str(k) / "manifest.json").exists()
    assert (tmp_path / "carry" / str(k) / small.name).exists()

    stash = tmp_path / "stash"
    for i in range(1, k + 1):  # one device call each
        carry.stash(tmp_path / "carry" / str(i), stash)
        assert not any((tmp_path / "carry" / str(i)).iterdir())
    info = carry.unpack(stash, tmp_path / "site", install_wheels=False)
    site = tmp_path / "site"
    for name, data in files.items():
        kept = carry._keep(name)
        assert (site / name).exists() == kept, name
        if kept:
            assert (site / name).read_bytes() == data
    assert (site / "nvidia/dali/libdali_operators.so").stat().st_mode & 0o111  # still executable
    assert info["members"] == len(files) - 4


def test_a_missing_or_damaged_part_is_named(carry, tmp_path, rng):
    _fake_wheel(tmp_path / "dali.whl", rng)
    man = carry.pack(tmp_path / "dali.whl", [], tmp_path / "carry", chunk_mib=20000 / 2**20)
    k = len(man["parts"])
    stash = tmp_path / "stash"
    carry.stash(tmp_path / "carry" / str(k), stash)  # the last part only: the others never arrived
    with pytest.raises(carry.CarryError, match="parts not stashed yet: dali.tar.xz.part1"):
        carry.unpack(stash, tmp_path / "site", install_wheels=False)
    for i in range(1, k):
        carry.stash(tmp_path / "carry" / str(i), stash)
    part = stash / "dali.tar.xz.part1"
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(carry.CarryError, match="part1: SHA-256 mismatch"):
        carry.unpack(stash, tmp_path / "site", install_wheels=False)
    assert not (tmp_path / "site" / "nvidia").exists()


def test_cli_errors_are_one_line_and_leave_nothing(carry, tmp_path, capsys, rng):
    out = tmp_path / "carry"
    out.mkdir()
    assert carry.main(["pack", "--wheel", str(tmp_path / "x.whl"), "--out", str(out)]) == 2
    assert "no such wheel" in capsys.readouterr().err
    (tmp_path / "broken.whl").write_bytes(b"not a zip")
    out.rmdir()
    assert carry.main(["pack", "--wheel", str(tmp_path / "broken.whl"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("carry: ") and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.whl"]
    _fake_wheel(tmp_path / "dali.whl", rng)  # fails midway: the parts are written, a small wheel is missing
    with pytest.raises(carry.CarryError, match="could not write"):
        carry.pack(tmp_path / "dali.whl", [tmp_path / "gone.whl"], out, chunk_mib=1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.whl", "dali.whl"]  # no partial output
    assert carry.main(["stash", str(tmp_path / "nope"), "--to", str(tmp_path / "s")]) == 2
    assert "name it in the call's carry list" in capsys.readouterr().err
    assert carry.main(["unpack", "--from", str(tmp_path), "--site", str(tmp_path / "site")]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_manifest_lists_what_pack_wrote(carry, tmp_path, rng):
    _fake_wheel(tmp_path / "dali.whl", rng)
    man = carry.pack(tmp_path / "dali.whl", [], tmp_path / "carry", chunk_mib=1.0)
    assert len(man["parts"]) == 1
    on_disk = json.loads((tmp_path / "carry" / "1" / "manifest.json").read_text())
    assert on_disk == man
    assert on_disk["parts"][0]["sha256"] == carry._sha256(tmp_path / "carry" / "1" / "dali.tar.xz.part1")


def test_verify_renders_with_the_dali_in_the_site_folder(tmp_path):
    """``verify`` loads DALI from the given folder only (codec packages blocked) and compares it
    with Numba; here the folder links to the installed DALI, standing in for a carried copy."""
    import subprocess
    import sys

    dali = pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (the dali extra; CI installs it)")
    site = tmp_path / "site"
    (site / "nvidia").mkdir(parents=True)
    (site / "nvidia" / "dali").symlink_to(Path(dali.__file__).parent)
    script = str(ROOT / "benchmarks" / "carry.py")
    r = subprocess.run(
        [sys.executable, script, "verify", "--site", str(site)], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"DALI from {site}" in r.stdout and "max |DALI - numba| = " in r.stdout
    assert int(r.stdout.split("max |DALI - numba| = ")[1].split()[0]) <= 1
    # a folder without DALI: the machine's own copy must not pass for the carried one
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run(
        [sys.executable, script, "verify", "--site", str(empty)], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 2 and "not from" in r.stderr
