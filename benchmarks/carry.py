"""Move NVIDIA DALI (and kornia) to the device machine, which has no package index.

The DALI CUDA 13 wheel is ~199 MB; one device call carries at most 64 MiB of working tree. So:

    python benchmarks/carry.py pack                 # here, once: .carry/1 .. .carry/K (K = 3 for DALI 2.4.0)

packs a pruned DALI (its C++ headers and the bindings of Pythons other than 3.11 / 3.12 dropped,
every shared library kept: they are all linked in) as one tar.xz, cut into parts of at most
``--chunk-mib``, with the small pure-Python / cp312 wheels it needs (makefun, nvtx, optree, gast,
astunparse, libcst) and kornia, and a manifest of SHA-256 sums. Then, on the device, one call per
part, back to back (a machine goes back after 30 s idle):

    run(carry=[".carry/1"], command="python3 benchmarks/carry.py stash .carry/1")
    ...
    run(carry=[".carry/K"], command="python3 benchmarks/carry.py stash .carry/K && "
        "python3 benchmarks/carry.py unpack && { python3 benchmarks/carry.py verify --device cuda; "
        "python3 benchmarks/gpu_check.py --site /tmp/fastssl-site --json $OUT/gpu_check.json; }")

``stash`` moves a part out of the working tree (to /tmp/fastssl-carry, which lives as long as
the machine); ``unpack`` checks every sum, joins, extracts DALI and installs the wheels into
/tmp/fastssl-site with ``pip --no-deps --no-index`` (nothing is fetched there). DALI's image
codec wheels (nvimgcodec, nvjpeg) are not carried: the warp and arithmetic operators do not
load them: ``verify`` renders patches with the carried DALI (those packages blocked from
import) and with Numba on the same parameters, and fails beyond 1 LSB.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

DALI = "nvidia-dali-cuda130==2.4.0"
SMALL = ["makefun", "nvtx", "optree", "gast", "astunparse", "libcst", "kornia", "kornia_rs"]
KEEP_PY = ("cpython-311-", "cpython-312-")
STASH = Path("/tmp/fastssl-carry")
SITE = Path("/tmp/fastssl-site")
MANIFEST = "manifest.json"


class CarryError(Exception):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _keep(name: str) -> bool:
    """Members of the DALI wheel worth carrying."""
    if "/include/" in name or name.endswith(".dist-info/RECORD"):
        return False
    if ".cpython-3" in name and name.endswith(".so"):
        return any(k in name for k in KEEP_PY)
    return True


def prune_to_tar_xz(wheel: Path, out: Path, preset: int = 9) -> dict:
    """The wheel's kept members as a tar.xz (file modes kept); returns member counts."""
    kept = dropped = 0
    with (
        zipfile.ZipFile(wheel) as z,
        lzma.open(out, "wb", preset=preset | lzma.PRESET_EXTREME) as xz,
        tarfile.open(fileobj=xz, mode="w|") as tar,
    ):
        for info in z.infolist():
            if info.is_dir():
                continue
            if not _keep(info.filename):
                dropped += 1
                continue
            data = z.read(info)
            ti = tarfile.TarInfo(info.filename)
            ti.size = len(data)
            ti.mode = (info.external_attr >> 16) & 0o777 or 0o644
            tar.addfile(ti, io.BytesIO(data))
            kept += 1
    return {"kept": kept, "dropped": dropped}


def download(dest: Path, python_version: str = "3.12") -> list[Path]:
    """pip download the DALI wheel and the small ones for the device's Python (no deps)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    cmd += ["--python-version", python_version, "--implementation", "cp"]
    for plat in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"):
        cmd += ["--platform", plat]
    subprocess.run(cmd + [DALI] + SMALL, check=True)
    return sorted(dest.glob("*.whl"))


def pack(wheel: Path, small: list[Path], out: Path, chunk_mib: float) -> dict:
    """Write ``out/1 .. out/K``; the last folder also holds the small wheels and the manifest."""
    from fastssl.atomic import atomic_output
    from fastssl.errors import FastSSLError

    if out.exists():
        raise CarryError(f"{out} exists: remove it first")
    if not zipfile.is_zipfile(wheel):
        raise CarryError(f"{wheel} is not a wheel (not a zip archive)")
    try:
        with atomic_output(out, folder=True) as tmp_out:
            return _pack_into(wheel, small, tmp_out, chunk_mib)
    except FastSSLError as e:
        raise CarryError(str(e)) from None


def _pack_into(wheel: Path, small: list[Path], out: Path, chunk_mib: float) -> dict:
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        blob = Path(tmp) / "dali.tar.xz"
        counts = prune_to_tar_xz(wheel, blob)
        size = blob.stat().st_size
        chunk = int(chunk_mib * 2**20)
        k = max(1, -(-size // chunk))
        parts = []
        with open(blob, "rb") as f:
            for i in range(1, k + 1):
                d = out / str(i)
                d.mkdir()
                p = d / f"dali.tar.xz.part{i}"
                p.write_bytes(f.read(chunk))
                parts.append({"name": p.name, "sha256": _sha256(p), "bytes": p.stat().st_size})
        whole = _sha256(blob)
    last = out / str(k)
    wheels = []
    for w in small:
        shutil.copy2(w, last / w.name)
        wheels.append({"name": w.name, "sha256": _sha256(w)})
    man = {
        "dali_wheel": wheel.name,
        "dali_tar_xz": {"sha256": whole, "bytes": size, **counts},
        "parts": parts,
        "wheels": wheels,
    }
    (last / MANIFEST).write_text(json.dumps(man, indent=1))
    return man


def stash(folder: Path, stash_dir: Path = STASH) -> list[str]:
    """Move a carried folder's files out of the working tree."""
    if not folder.is_dir():
        raise CarryError(f"{folder} is not here: name it in the call's carry list")
    stash_dir.mkdir(parents=True, exist_ok=True)
    moved = []
    for f in sorted(folder.iterdir()):
        shutil.move(str(f), stash_dir / f.name)
        moved.append(f.name)
    return moved


def unpack(stash_dir: Path = STASH, site: Path = SITE, install_wheels: bool = True) -> dict:
    """Check every part, join, extract DALI into ``site`` and install the small wheels there."""
    man_path = stash_dir / MANIFEST
    if not man_path.exists():
        raise CarryError(f"no {MANIFEST} in {stash_dir}: stash the last part first")
    man = json.loads(man_path.read_text())
    missing = [p["name"] for p in man["parts"] if not (stash_dir / p["name"]).exists()]
    if missing:
        raise CarryError(f"parts not stashed yet: {', '.join(missing)} (the machine may have been given back)")
    for p in man["parts"] + man["wheels"]:
        if _sha256(stash_dir / p["name"]) != p["sha256"]:
            raise CarryError(f"{p['name']}: SHA-256 mismatch (a broken transfer): carry it again")
    site.mkdir(parents=True, exist_ok=True)
    blob = stash_dir / "dali.tar.xz"
    with open(blob, "wb") as out:
        for p in man["parts"]:
            with open(stash_dir / p["name"], "rb") as f:
                shutil.copyfileobj(f, out)
    if _sha256(blob) != man["dali_tar_xz"]["sha256"]:
        raise CarryError("joined archive: SHA-256 mismatch")
    with tarfile.open(blob, "r:xz") as tar:
        tar.extractall(site, filter="data")
    blob.unlink()
    if install_wheels and man["wheels"]:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        cmd += ["--upgrade", "--target", str(site)] + [str(stash_dir / w["name"]) for w in man["wheels"]]
        subprocess.run(cmd, check=True)
    return {"site": str(site), "members": man["dali_tar_xz"]["kept"], "wheels": [w["name"] for w in man["wheels"]]}


class _BlockImports:
    """A meta-path finder that refuses some modules: proves the carried DALI works without them."""

    def __init__(self, prefixes):
        self.prefixes = tuple(prefixes)

    def find_spec(self, name, path=None, target=None):
        if name.startswith(self.prefixes):
            raise ImportError(f"{name} is not carried")
        return None


NOT_CARRIED = ("nvidia.nvimgcodec", "nvidia.nvjpeg", "nvidia.libnvcomp")


def verify(site: Path, device: str = "cpu", n: int = 64, size: int = 32) -> dict:
    """Render ``n`` patches with the DALI found in ``site`` (put first, the codec packages
    blocked) and with Numba (torch on the CPU where Numba is missing) on the same parameters;
    their largest difference and its share."""
    import gpu_check  # makes fastssl importable from a plain checkout
    import numpy as np

    sys.meta_path.insert(0, _BlockImports(NOT_CARRIED))
    gpu_check.add_site(str(site), first=True)  # ahead of any copy the machine has
    import nvidia.dali

    if not Path(nvidia.dali.__file__).is_relative_to(site):
        raise CarryError(f"nvidia.dali came from {nvidia.dali.__file__}, not from {site}")

    from fastssl import AugmentSpec
    from fastssl.image import load_image
    from fastssl.mono import Renderer, backend_available

    img, spec = load_image(None), AugmentSpec(size=size)
    # the reference: Numba, or the torch backend on the CPU where Numba is missing
    ref = Renderer(img, spec, "numba" if backend_available("numba", None) is None else "torch")
    p = ref.params(0, n, seed=7)
    d = np.abs(ref.render_nhwc(p).astype(int) - Renderer(img, spec, "dali", device).render_nhwc(p).astype(int))
    return {
        "dali": nvidia.dali.__file__,
        "device": device,
        "reference": ref.backend,
        "max_diff": int(d.max()),
        "share_off": float((d > 0).mean()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="here: download, prune and split into .carry/1..K")
    p.add_argument("--out", default=".carry")
    p.add_argument("--wheel", help="a DALI wheel already downloaded (default: pip download it)")
    p.add_argument("--small", nargs="*", default=None, help="small wheels to carry (default: pip download them)")
    p.add_argument("--cache", default="/tmp/fastssl-wheels", help="where pip downloads to")
    p.add_argument("--chunk-mib", type=float, default=56.0, help="part size; a call carries at most 64 MiB")
    s = sub.add_parser("stash", help="device: move a carried part out of the tree")
    s.add_argument("folder")
    s.add_argument("--to", default=str(STASH))
    u = sub.add_parser("unpack", help="device: verify, join, extract and install into --site")
    u.add_argument("--from", dest="src", default=str(STASH))
    u.add_argument("--site", default=str(SITE))
    u.add_argument("--no-wheels", action="store_true", help="DALI only (a check on another Python)")
    v = sub.add_parser("verify", help="the carried DALI against Numba on the same parameters")
    v.add_argument("--site", default=str(SITE))
    v.add_argument("--device", default="cpu", help="cpu (DALI's CPU operators) or cuda")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "pack":
            if args.wheel:
                wheel = Path(args.wheel)
                small = [Path(w) for w in args.small or []]
            else:
                got = download(Path(args.cache))
                wheel = next(w for w in got if w.name.startswith("nvidia_dali"))
                small = [w for w in got if w != wheel]
            if not wheel.exists():
                raise CarryError(f"no such wheel: {wheel}")
            man = pack(wheel, small, Path(args.out), args.chunk_mib)
            k = len(man["parts"])
            mib = man["dali_tar_xz"]["bytes"] / 2**20
            print(f"{wheel.name}: {mib:.1f} MiB as tar.xz in {k} parts under {args.out}/1..{k}")
        elif args.cmd == "stash":
            moved = stash(Path(args.folder), Path(args.to))
            print(f"stashed {len(moved)} file(s) in {args.to}: {', '.join(moved)}")
        elif args.cmd == "verify":
            r = verify(Path(args.site), args.device)
            print(
                f"DALI from {r['dali']} on {r['device']}: max |DALI - {r['reference']}| = {r['max_diff']} LSB "
                f"on {100 * r['share_off']:.3f}% of values"
            )
            if r["max_diff"] > 1:
                return 1
        else:
            info = unpack(Path(args.src), Path(args.site), install_wheels=not args.no_wheels)
            wheels = "no wheels" if args.no_wheels else f"{len(info['wheels'])} wheels"
            print(f"DALI ({info['members']} files) and {wheels} in {info['site']}")
    except (CarryError, subprocess.CalledProcessError) as e:
        print(f"carry: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
