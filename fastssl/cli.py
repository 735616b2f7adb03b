"""``fastssl`` command line: thin; it parses, builds a spec, and calls the library.

Errors a user can cause print one line (``fastssl: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from .errors import FastSSLError

SPEC_HELP = (
    "override an AugmentSpec field, e.g. --spec rotation=0 --spec scale=0.1,1 --spec initial_crop=none (repeatable)"
)


def parse_spec(size: int | None, overrides: list[str] | None):
    """An AugmentSpec from ``--size`` and ``--spec key=value`` overrides, read like ``--set``
    values (typed from the field's default; ``scale=0.1,1``; ``initial_crop=none``)."""
    from .config import as_dict, parse_value, to_dataclass
    from .spec import AugmentSpec

    defaults = as_dict(AugmentSpec())
    kw: dict = {}
    for item in overrides or []:
        key, sep, val = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in defaults:
            raise FastSSLError(f"bad --spec {item!r}: expected key=value with key one of {', '.join(defaults)}")
        try:
            kw[key] = parse_value(item, val, defaults[key])
        except FastSSLError as e:
            raise FastSSLError(f"bad --spec {item!r}: {str(e).partition(': ')[2] or e}") from None
    if size is not None:
        if "size" in kw and kw["size"] != size:
            raise FastSSLError(f"--size {size} and --spec size={kw['size']} disagree: give the patch side once")
        kw["size"] = size
    try:
        return to_dataclass(AugmentSpec, kw)
    except FastSSLError as e:
        raise FastSSLError(f"bad --spec: {e}") from None


def _images(items):
    """None (the built-in photo), one image, or a list of several (a list of one is one)."""
    if not items:
        return None
    return items[0] if len(items) == 1 else list(items)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FastSSLError(f"--size takes integers separated by commas, got {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise FastSSLError(f"--size takes positive integers, got {text!r}")
    return sizes


def _check_json(path: str | None) -> None:
    """Refuse a --json destination before the work, not after it."""
    if path:
        from .atomic import JSON, check_destination

        check_destination(path, replace=JSON, what="--json")


def _write_json(path: str, obj) -> None:
    from .atomic import JSON
    from .report import write_json

    write_json(path, obj, replace=JSON, what="--json")


def cmd_mono(args) -> int:
    from .mono import export, preview

    spec = parse_spec(args.size, args.spec)
    if args.action == "preview":
        out = preview(_images(args.image), args.out, spec, n=args.n, seed=args.seed, backend=args.backend)
        print(f"wrote {out}")
    else:
        out = export(
            _images(args.image),
            args.n,
            args.out,
            spec,
            seed=args.seed,
            backend=args.backend,
            batch_size=args.batch_size,
            jpeg_quality=args.jpeg_quality,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
        print(f"wrote {args.n} patches of {spec.size}x{spec.size} to {out}")
    return 0


def cmd_bench(args) -> int:
    from .image import load_image

    _check_json(args.json)
    if args.what == "augment" and not args.seconds > 0:
        raise FastSSLError(f"--seconds must be > 0, got {args.seconds:g}")
    if args.what == "agreement" and args.n < 1:
        raise FastSSLError(f"--n must be >= 1, got {args.n}")
    image = load_image(args.image)
    if args.what == "augment":
        threads = args.threads or len(os.sched_getaffinity(0))
        from .bench import bench_augment, format_table, profile_numba

        runs = []
        for size in _sizes(args.size):
            if args.profile:
                from .kernels import backend_class

                if backend_class(args.backend).profiler == "stages":
                    prof = profile_numba(image, size, threads)
                else:
                    from .bench import profile_torch

                    prof = profile_torch(image, size, threads, args.backend, args.device)
                print(json.dumps(prof))
                runs.append({"size": size, "threads": threads, "profile": prof})
                continue
            print(f"S={size}: {threads} threads, {args.seconds:g} s per side")
            run = bench_augment(image, size, threads, args.seconds, only=args.only)
            print(format_table(run))
            runs.append(run)
        if args.json:
            _write_json(args.json, runs[0] if len(runs) == 1 else runs)
            print(f"wrote {args.json}")
        return 0
    # agreement
    from .quality import agreement, plot_spectra

    runs = []
    for size in _sizes(args.size):
        r = agreement(image, size, args.n, args.seed, args.backend)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "spectrum_db"}))
        if args.plot:
            path = args.plot if len(_sizes(args.size)) == 1 else args.plot.replace(".png", f"-{size}.png")
            plot_spectra(r, path)
            print(f"wrote {path}")
        runs.append(r)
    if args.json:
        _write_json(args.json, runs[0] if len(runs) == 1 else runs)
        print(f"wrote {args.json}")
    return 0


def cmd_data(args) -> int:
    from .data.beton import convert, read_info
    from .data.sources import open_source, split_indices

    if args.action == "info":
        print(json.dumps(read_info(args.beton, verify="full" if args.verify else "auto"), indent=1))
        return 0
    src = open_source(args.src, split=args.split)
    indices = None
    if args.val_per_class:
        train, val = split_indices(src.labels, args.val_per_class)
        indices = train if args.part == "train" else val
    elif args.part != "all":
        raise FastSSLError(f"--part {args.part} needs --val-per-class N")
    summary = convert(
        src,
        args.dst,
        indices=indices,
        max_res=args.max_res,
        jpeg_quality=args.jpeg_quality,
        write_mode=args.write_mode,
        strict=args.strict,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(json.dumps(summary))
    if summary["skipped"]:
        print(
            f"skipped {summary['skipped']} unreadable images (e.g. {summary['skipped_examples'][0]}); "
            "--strict makes that an error",
            file=sys.stderr,
        )
    return 0


def cmd_bench_loader(args) -> int:
    from .bench_loader import bench_loader, format_loader_table

    _check_json(args.json)
    threads = args.threads or len(os.sched_getaffinity(0))
    run = bench_loader(
        args.data,
        threads=threads,
        res=args.res,
        batch_size=args.batch_size,
        write_modes=args.write_mode or ["jpg", "smart"],
        split=args.split,
        epochs=args.epochs,
    )
    return _show(format_loader_table(run), run, args.json)


def _show(table: str, run: dict, json_path: str | None) -> int:
    """A bench's table on the terminal, its run as JSON where asked."""
    print(table)
    if json_path:
        _write_json(json_path, run)
        print(f"wrote {json_path}")
    return 0


def _choices(text: str, allowed, flag: str) -> list[str]:
    out = [x.strip() for x in text.split(",") if x.strip()]
    for x in out:
        if x not in allowed:
            raise FastSSLError(f"{flag} takes {', '.join(allowed)} separated by commas, got {x!r}")
    if not out:
        raise FastSSLError(f"{flag} is empty")
    return out


def cmd_bench_train(args) -> int:
    from .bench_train import DEFAULT, bench_train, format_train_table

    _check_json(args.json)
    run = bench_train(
        args.method or list(DEFAULT),
        preset=args.preset,
        overrides=args.set,
        image=args.image,
        data=args.data,
        device=args.device,
        threads=args.threads,
        compiles=_choices(args.compile, ("off", "on"), "--compile"),
        amps=_choices(args.amp, ("off", "bf16", "fp16"), "--amp") if args.amp else None,
        layouts=_choices(args.layout, ("channels_last", "contiguous"), "--layout"),
        resident=not args.no_resident,
        warmup=args.warmup,
        steps=args.steps,
        rounds=args.rounds,
        profile=args.profile,
    )
    return _show(format_train_table(run), run, args.json)


def _ints(text: str | None, flag: str = "--seeds"):
    """A comma-separated list of integers (None when the flag was not given)."""
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FastSSLError(f"{flag} takes integers separated by commas, got {text!r}") from None


def cmd_repro(args) -> int:
    from .repro import repro

    distill = args.method == "distill"
    repro(
        args.preset or ("cpu-mini-distill" if distill else "cpu-mini"),
        image=_images(args.image),
        data=args.data,
        eval_data=args.eval_data,
        out=args.out,
        method=args.method,
        overrides=args.set,
        seeds=_ints(args.seeds),
        n_images=_ints(args.n_images, "--n-images"),
        n_images_from=args.n_images_from,
        ablation=args.ablation,
        each_image=args.each_image,
        smoke=args.smoke,
        progress=not args.quiet,
    )
    print(f"wrote {Path(args.out) / ('scores.json' if distill else 'probes.json')}, with its table and figure")
    return 0


def _train_sets(args) -> list[str]:
    """``--set`` with ``--model`` and ``--teacher`` as the recipe keys they stand for."""
    sets = list(args.set or [])
    if args.model is not None:
        if args.method not in ("supervised", "distill"):
            raise FastSSLError(f"--model picks the network of supervised or distill; {args.method} trains AlexNet")
        sets.append(f"{args.method}.settings.model={args.model}")
    if args.teacher is not None:
        if args.method != "distill":
            raise FastSSLError(f"--teacher is for --method distill, not {args.method}")
        sets.append(f"distill.settings.teacher={args.teacher}")
    return sets


def cmd_train(args) -> int:
    from .commands import train_one

    status = train_one(
        args.preset,
        method=args.method,
        image=_images(args.image),
        data=args.data,
        out=args.out,
        overrides=_train_sets(args),
        resume=args.resume,
        allow_changes=args.allow_changes,
        progress=not args.quiet,
    )
    if status == "interrupted":
        print(f"fastssl: interrupted; checkpoint saved in {args.out}; continue with --resume", file=sys.stderr)
        return 130
    print(f"wrote {Path(args.out) / 'ckpt.pt'}")
    return 0


def cmd_probe(args) -> int:
    from .commands import probe_one

    res = probe_one(
        args.ckpt,
        preset=args.preset,
        data=args.data,
        eval_data=args.eval_data,
        out=args.out,
        overrides=args.set,
        progress=not args.quiet,
    )
    print(json.dumps(res["top1"]))
    return 0


def cmd_score(args) -> int:
    from .commands import score_one

    res = score_one(args.ckpt, preset=args.preset, data=args.data, held_out=args.held_out, overrides=args.set)
    print(json.dumps(res))
    return 0


def cmd_filters(args) -> int:
    from .filters import conv1_stats, filter_figure
    from .pretrained import load_trunk

    if args.png:
        from .atomic import PNG, check_destination

        check_destination(args.png, replace=PNG, what="--png")
    trunks = []  # one panel per argument, named by its folder
    for path in args.ckpt:
        trunks.append((Path(path).parent.name or path, load_trunk(path)))
        print(json.dumps({"ckpt": path, **conv1_stats(trunks[-1][1])}))
    if args.png:
        filter_figure(trunks, args.png)
        print(f"wrote {args.png}")
    return 0


def cmd_pretrained(args) -> int:
    from .pretrained import export_pretrained

    info = export_pretrained(args.ckpt, args.out, overwrite=args.overwrite)
    print(json.dumps({k: v for k, v in info.items() if k != "source"}))
    print(f"wrote {args.out}; load it with fastssl.load_pretrained({str(args.out)!r})")
    return 0


def cmd_report(args) -> int:
    from .report import report, seeds_in

    if any(Path(args.out).glob("seed-*/scores/*.json")):  # a distill run's rows
        from .repro_distill import distill_report

        distill_report(args.out, _ints(args.seeds) or seeds_in(args.out), preset=args.preset)
        print(f"wrote {Path(args.out) / 'scores.json'}, scores.md, scores.png")
        return 0
    report(args.out, _ints(args.seeds), preset=args.preset)
    print(f"wrote {Path(args.out) / 'probes.json'}, table.md, probes.png")
    return 0


def cmd_plan(args) -> int:
    from .plan import plan
    from .repro import image_row_names

    _check_json(args.json)
    ones = image_row_names(
        args.method, _images(args.image), _ints(args.n_images, "--n-images"), args.ablation, args.each_image
    )
    print(f"plan: preset {args.preset}, method {args.method}, {args.steps} timed steps per stage")
    res = plan(
        args.preset,
        method=args.method,
        device=args.device,
        overrides=args.set,
        steps=args.steps,
        train_images=args.train_images,
        image_rows=ones,
        progress=not args.quiet,
    )
    print(f"total: {res['total_estimated_seconds'] / 3600:.2f} h on {res['device']}")
    if args.json:
        _write_json(args.json, res)
        print(f"wrote {args.json}")
    return 0


def cmd_recipe(args) -> int:
    from .config import load

    print(json.dumps(load(args.preset, args.set), indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .methods import METHODS, pretext_methods
    from .mono import backend_names

    BACKENDS = backend_names()
    PRETEXT = pretext_methods()

    ap = argparse.ArgumentParser(prog="fastssl", description="Self-supervised learning from a single image, fast.")
    sub = ap.add_subparsers(dest="command", required=True)

    mono = sub.add_parser("mono", help="augmented patches of one image")
    msub = mono.add_subparsers(dest="action", required=True)
    for name, hlp in (("preview", "a grid of sample patches as PNG"), ("export", "write N patches (.npy or JPEGs)")):
        p = msub.add_parser(name, help=hlp)
        p.add_argument(
            "image",
            nargs="*",
            help="source image(s) or a folder of them; paper:NAME for the paper's (default: built-in)",
        )
        p.add_argument("--size", type=int, default=None, help="patch side S (default 256)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--backend", choices=BACKENDS, default="auto")
        p.add_argument("--spec", action="append", metavar="KEY=VALUE", help=SPEC_HELP)
        if name == "preview":
            p.add_argument("-o", "--out", required=True, help="PNG to write")
            p.add_argument("--n", type=int, default=64, help="number of patches in the grid")
        else:
            p.add_argument("--out", required=True, help="PATH.npy (uint8 N x S x S x 3) or a folder for JPEGs")
            p.add_argument("--n", type=int, required=True, help="number of patches")
            p.add_argument("--batch-size", type=int, default=256)
            p.add_argument("--jpeg-quality", type=int, default=95)
            p.add_argument("--overwrite", action="store_true")
            p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.set_defaults(func=cmd_mono)

    bench = sub.add_parser("bench", help="throughput and quality measurements")
    bsub = bench.add_subparsers(dest="what", required=True)
    b = bsub.add_parser("augment", help="patches/s of the paper chain: fastssl vs peers, same cores")
    b.add_argument("--size", default="32,64,256", help="patch side(s), comma-separated")
    b.add_argument("--threads", type=int, default=None, help="threads / worker processes (default: all cores)")
    b.add_argument("--seconds", type=float, default=3.0, help="timed seconds per side")
    b.add_argument("--only", action="append", help="run only these sides (repeatable)")
    b.add_argument(
        "--profile",
        action="store_true",
        help="where the time goes instead: per-stage timing (numba), torch.profiler (torch, dali)",
    )
    b.add_argument("--backend", choices=BACKENDS[1:], default="numba", help="with --profile")
    b.add_argument("--device", default="cpu", help="with --profile: cpu or cuda")
    b.add_argument("--image", default=None, help="source image (default: a built-in photo)")
    b.add_argument("--json", default=None, help="write the results here")
    b.set_defaults(func=cmd_bench)
    a = bsub.add_parser("agreement", help="PSNR and power spectra against the paper's PIL chain")
    a.add_argument("--size", default="64", help="patch side(s), comma-separated")
    a.add_argument("--n", type=int, default=256, help="patches per set")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--backend", choices=[x for x in BACKENDS if x != "auto"], default="numba")
    a.add_argument("--image", default=None, help="source image (default: a built-in photo)")
    a.add_argument("--json", default=None)
    a.add_argument("--plot", default=None, help="PNG of the spectra")
    a.set_defaults(func=cmd_bench)
    lb = bsub.add_parser("loader", help="images/s: FFCV loader vs a DataLoader with PIL decoding, same cores")
    lb.add_argument("--data", required=True, help="image folder, .tar/.tar.gz archive, or cifar10")
    lb.add_argument("--split", default=None, help="split folder to use (train, val) when the source has several")
    lb.add_argument("--res", type=int, default=32, help="output resolution of the random-resized crop")
    lb.add_argument("--batch-size", type=int, default=256)
    lb.add_argument("--epochs", type=int, default=1, help="passes per loader (FFCV compiles once, in the first)")
    lb.add_argument("--threads", type=int, default=None, help="loader workers on each side (default: all cores)")
    lb.add_argument(
        "--write-mode",
        action="append",
        choices=["jpg", "raw", "smart"],
        help="FFCV image storage to measure (repeatable; default jpg and smart)",
    )
    lb.add_argument("--json", default=None)
    lb.set_defaults(func=cmd_bench_loader)
    tb = bsub.add_parser(
        "train", help="training steps/s per method and variant: data wait, forward, backward, optimiser"
    )
    tb.add_argument(
        "--method",
        action="append",
        help="rotnet, deepcluster, bigan, supervised, probe (default: these five) or distill (with "
        "--preset cpu-mini-distill); repeatable",
    )
    tb.add_argument("--preset", default="cpu-mini", help="the recipe whose shapes are measured (or a .toml)")
    tb.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe value")
    tb.add_argument("--image", default=None, help="source image of the one-image rows (default: built-in)")
    tb.add_argument(
        "--data", default=None, help="labelled .beton (or image folder) for supervised and probe (default: synthetic)"
    )
    tb.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    tb.add_argument("--threads", type=int, default=None, help="torch threads in every row (default: all cores)")
    tb.add_argument("--compile", default="off,on", help="off,on (comma-separated)")
    tb.add_argument("--amp", default=None, help="off,bf16 (and fp16 on CUDA); default: all the device has")
    tb.add_argument("--layout", default="channels_last,contiguous", help="channels_last,contiguous")
    tb.add_argument("--no-resident", action="store_true", help="no compute-only rows on data held in memory")
    tb.add_argument("--warmup", type=int, default=3, help="untimed steps per row (compile happens here)")
    tb.add_argument("--steps", type=int, default=10, help="timed steps per row")
    tb.add_argument(
        "--profile", type=int, default=0, metavar="N", help="also list each row's N most costly ops (torch.profiler)"
    )
    tb.add_argument(
        "--rounds", type=int, default=1, help="measure every row this many times, round-robin; report the median"
    )
    tb.add_argument("--json", default=None)
    tb.set_defaults(func=cmd_bench_train)

    rp = sub.add_parser("repro", help="the paper's table in miniature: random / mono / full METHOD / supervised")
    rp.add_argument(
        "--preset",
        default=None,
        help="cpu-mini (2 CPU cores: RotNet ~10 min a seed), paper (GPUs), or a .toml; distill: cpu-mini-distill",
    )
    rp.add_argument(
        "--image", action="append", help="the source image (repeat, or a folder, for several; default: built-in)"
    )
    rp.add_argument("--data", required=True, help="labelled train source: folder, .tar/.tar.gz, or cifar10")
    rp.add_argument("--eval-data", default=None, help="labelled source to score on (default: held-out part of --data)")
    rp.add_argument("--out", default="runs/repro")
    rp.add_argument(
        "--method",
        default="rotnet",
        help=f"{' | '.join(PRETEXT)} (the mono and full rows), or distill (teacher, students from image, data, noise)",
    )
    rp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe value, e.g. probe.epochs=2")
    rp.add_argument("--seeds", default=None, help="train and probe every row for each seed, e.g. 0,1,2 (mean ± std)")
    rp.add_argument(
        "--n-images",
        default=None,
        help="also train on the first N training images of --data, e.g. 10,1000 (rows deka-M, kilo-M)",
    )
    rp.add_argument(
        "--n-images-from",
        default=None,
        metavar="PHOTOS",
        help="draw the --n-images rows from this folder or archive of photos instead (class folders ignored)",
    )
    rp.add_argument(
        "--ablation", action="store_true", help="also the rows without scale, rotation/shear or colour jitter"
    )
    rp.add_argument(
        "--each-image",
        action="store_true",
        help="the one-image rows once per --image photo (or per photo of a folder), named ROW@PHOTO",
    )
    rp.add_argument(
        "--smoke", action="store_true", help="every stage at the preset's shapes for a few steps (same outputs)"
    )
    rp.add_argument("--quiet", action="store_true")
    rp.set_defaults(func=cmd_repro)
    tr = sub.add_parser("train", help="train one method (mono image or a data source)")
    tr.add_argument("--method", default="rotnet", help=" | ".join(METHODS))
    tr.add_argument(
        "--image", action="append", help="train on patches of this image (repeat, or a folder, for several)"
    )
    tr.add_argument("--data", default=None, help="train on this source instead (labels used only by supervised)")
    tr.add_argument("--preset", default="cpu-mini")
    tr.add_argument("--out", required=True)
    tr.add_argument("--resume", action="store_true")
    tr.add_argument(
        "--allow-changes",
        action="store_true",
        help="with --resume: continue with a changed recipe (the change is logged; the resume is not exact)",
    )
    tr.add_argument(
        "--model", default=None, help="supervised / distill: the network (wrn-16-4, wrn-40-4, resnet-small, resnet18)"
    )
    tr.add_argument("--teacher", default=None, help="distill: the teacher's training checkpoint")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(func=cmd_train)
    sc = sub.add_parser("score", help="top-1 of a classifier checkpoint (supervised, distill) on labelled images")
    sc.add_argument("ckpt")
    sc.add_argument("--data", required=True, help="labelled source: folder, .tar/.tar.gz, .beton or cifar10-test")
    sc.add_argument("--held-out", action="store_true", help="only the held-out part (the last val_per_class a class)")
    sc.add_argument("--preset", default="cpu-mini")
    sc.add_argument("--set", action="append", metavar="KEY=VALUE")
    sc.set_defaults(func=cmd_score)
    pr = sub.add_parser("probe", help="linear probes conv1..conv5 of a checkpoint")
    pr.add_argument("ckpt")
    pr.add_argument("--data", required=True, help="labelled train source")
    pr.add_argument("--eval-data", default=None)
    pr.add_argument("--preset", default="cpu-mini")
    pr.add_argument("--out", required=True)
    pr.add_argument("--set", action="append", metavar="KEY=VALUE")
    pr.add_argument("--quiet", action="store_true")
    pr.set_defaults(func=cmd_probe)

    fi = sub.add_parser("filters", help="conv1's filters of checkpoints: colour share (JSON) and a picture")
    fi.add_argument("ckpt", nargs="+")
    fi.add_argument("--png", default=None, help="write the filters of every checkpoint side by side here")
    fi.set_defaults(func=cmd_filters)

    pt = sub.add_parser("pretrained", help="a checkpoint's trained network as a plain state dict + its config")
    pt.add_argument("ckpt")
    pt.add_argument("--out", required=True, help="FILE.pt, for fastssl.load_pretrained (or torch.load)")
    pt.add_argument("--overwrite", action="store_true")
    pt.set_defaults(func=cmd_pretrained)

    rep = sub.add_parser("report", help="rewrite a repro folder's table, JSON and figure from its probe results")
    rep.add_argument("--out", required=True, help="the repro --out folder")
    rep.add_argument("--seeds", default=None, help="the seeds to summarise (default: every seed folder)")
    rep.add_argument("--preset", default="", help="the preset named in the figure's title")
    rep.set_defaults(func=cmd_report)

    pl = sub.add_parser("plan", help="steps, memory, timed seconds per step and estimated hours of a repro run")
    pl.add_argument("--preset", default="cpu-mini")
    pl.add_argument("--method", default="rotnet", help=f"the method of the run ({' | '.join(PRETEXT)})")
    pl.add_argument("--device", default=None, help="cpu, cuda (default: the recipe's)")
    pl.add_argument("--steps", type=int, default=3, help="timed steps per stage (after one warm-up step)")
    pl.add_argument(
        "--train-images", type=int, default=None, help="labelled training images (default: [mono] epoch_length)"
    )
    pl.add_argument("--image", action="append", help="as repro's: with --each-image, one row per photo")
    pl.add_argument("--each-image", action="store_true", help="as repro's: the one-image rows once per photo")
    pl.add_argument("--n-images", default=None, help="as repro's: the N-image rows, e.g. 10,1000")
    pl.add_argument("--ablation", action="store_true", help="as repro's: the three ablation rows per one-image row")
    pl.add_argument("--set", action="append", metavar="KEY=VALUE")
    pl.add_argument("--json", default=None)
    pl.add_argument("--quiet", action="store_true")
    pl.set_defaults(func=cmd_plan)

    rc = sub.add_parser("recipe", help="every value of a preset (or .toml) with overrides, checked, as JSON")
    rc.add_argument("--preset", default="cpu-mini")
    rc.add_argument("--set", action="append", metavar="KEY=VALUE")
    rc.set_defaults(func=cmd_recipe)

    data = sub.add_parser("data", help="labelled datasets: convert to FFCV, inspect")
    dsub = data.add_subparsers(dest="action", required=True)
    c = dsub.add_parser("convert", help="write an FFCV .beton (image + label) and its class index")
    c.add_argument("src", help="image folder, .tar/.tar.gz of one, ImageNet root (with --split), or cifar10")
    c.add_argument("dst", help="output .beton")
    c.add_argument("--split", default=None, help="split folder (train, val) when the source has several")
    c.add_argument("--val-per-class", type=int, default=0, help="hold out the last N images of each class")
    c.add_argument(
        "--part", choices=["all", "train", "val"], default="all", help="with --val-per-class: which part to write"
    )
    c.add_argument("--max-res", type=int, default=None, help="shrink images whose longer side exceeds this")
    c.add_argument("--jpeg-quality", type=int, default=90)
    c.add_argument(
        "--write-mode",
        choices=["smart", "jpg", "raw"],
        default="smart",
        help="smart: raw pixels below 32 KiB (CIFAR), JPEG above (ImageNet)",
    )
    c.add_argument("--strict", action="store_true", help="fail on the first unreadable image instead of skipping")
    c.add_argument("--workers", type=int, default=None)
    c.add_argument("--overwrite", action="store_true")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_data)
    i = dsub.add_parser("info", help="JSON: sample count and per-class counts, read from the file")
    i.add_argument("beton")
    i.add_argument(
        "--verify",
        action="store_true",
        help="check every byte against the conversion's checksums (default: up to 2 GiB)",
    )
    i.set_defaults(func=cmd_data)
    return ap


def flags(message: str, args) -> str:
    """A library message in the CLI's words: a parameter the library names in backticks
    (`batch_size`) becomes its flag (--batch-size) where this command has one."""
    import re

    def sub(m):
        name = m.group(1)
        return "--" + name.replace("_", "-") if name in vars(args) and name != "func" else name

    return re.sub(r"`([a-z_]+)`", sub, message)


def quiet_numba_finalizer(hook):
    """``hook`` (a ``sys.unraisablehook``) without one known, harmless report: numba's
    dispatcher finalizer raising KeyError while a function that FFCV compiled at run time is
    garbage-collected (a traceback on stderr per loader, after the work is done and correct)."""

    def unraisable(u) -> None:
        frames = traceback.extract_tb(u.exc_traceback) if u.exc_traceback else []
        last = frames[-1] if frames else None
        if (
            u.exc_type is KeyError
            and last is not None
            and last.name == "finalizer"
            and Path(last.filename).parts[-3:] == ("numba", "core", "dispatcher.py")
        ):
            return
        hook(u)

    return unraisable


def main(argv: list[str] | None = None, *, fresh: bool = True) -> int:
    """Run one command; ``fresh``: forget an earlier stop request (a program that already took
    Ctrl-C before calling, as :func:`run` does from its first line, passes False)."""
    from . import signals

    main_thread = threading.current_thread() is threading.main_thread()
    if fresh:
        signals.reset()
    stops = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, signals.raise_once) for s in stops} if main_thread else {}
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("fastssl: interrupted", file=sys.stderr)
        return 130
    rc = 1
    try:
        rc = args.func(args)
        if rc == 0:
            signals.check_stop()  # a stop swallowed where it landed is still a stop
    except FastSSLError as e:
        print(f"fastssl: error: {flags(str(e), args)}", file=sys.stderr)
        rc = 2
    except KeyboardInterrupt:
        print("fastssl: interrupted", file=sys.stderr)
        rc = 130
    finally:
        if main_thread and not signals.stopping():  # while stopping, later signals stay ignored
            for s, h in old.items():
                signal.signal(s, h)
    return rc


def run() -> None:
    """The ``fastssl`` program: :func:`main`, then exit with its status."""
    from . import signals

    # Ctrl-C and SIGTERM are taken from here on: one that lands while the libraries load, or
    # inside a compiled callback that swallows the exception, still stops the command
    signal.signal(signal.SIGINT, signals.raise_once)
    signal.signal(signal.SIGTERM, signals.raise_once)
    sys.unraisablehook = quiet_numba_finalizer(sys.unraisablehook)  # for the whole process, shutdown too
    try:
        rc = main(fresh=False)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader of our output went away (`fastssl recipe | head -1`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        rc = 1
    except KeyboardInterrupt:  # a stop that landed outside main's handlers (its message may be out)
        rc = 130
    if signals.stopping():  # stopping: a late signal must not turn exit 130 into death by signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # (an ignored signal stays ignored through shutdown)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if getattr(sys.modules.get("__main__"), "__spec__", None) is not None:
            # run as a module (`python -m`, `torchrun -m`), CPython may end by SIGINT after a
            # KeyboardInterrupt it saw, even a handled one (status -2 instead of 130, about
            # one stop in two under load): leave now, with the status as it is
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    run()
