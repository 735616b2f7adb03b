"""The trainer: method-agnostic. AMP, channels-last, torch.compile, DDP, checkpoints, metrics.

    trainer = Trainer(method, data, cfg, out_dir)
    trainer.fit()                    # or fit() again with cfg.resume=True after an interruption

- Device: ``auto`` takes CUDA when present. AMP: ``auto`` is bf16 on CUDA and on a CPU with
  bf16 matrix tiles (AMX-BF16: the bf16 step ran 1.2-1.6x the fp32 one there, ``fastssl bench
  train``), fp32 on other CPUs (AVX512-BF16 alone: bf16 about as fast as fp32); ``fp16`` adds a
  GradScaler; ``bf16`` / ``off`` force. The choice follows the hardware, never a timing, so a
  recipe runs the same arithmetic on the same machine every time.
- ``layout``: ``channels_last`` (default: inputs and weights channels-last end to end) or
  ``contiguous``.
- ``compile``: ``auto`` compiles on CUDA only (on the CPU a cold compile cost about 60 s and the
  compiled bf16 step ran slower than the eager one, ``fastssl bench train``).
- The settings picked (device, threads, amp, compile, layout) are one line on stderr as training
  starts (with progress on) and are kept in every checkpoint (``setup``).
- DDP: under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is started (nccl on CUDA,
  gloo on CPU) and every network of the method is wrapped; rank 0 writes files.
- Checkpoints ``ckpt.pt`` every ``ckpt_every`` steps, at each epoch end and at the end,
  written to a temporary name and renamed. They hold tensors and plain values only, so
  ``torch.load(weights_only=True)`` reads them: a checkpoint never runs code.
  ``resume=True`` continues exactly where it stopped: same epoch, same batch, same RNG state.
- Ctrl-C saves a checkpoint at the current step and returns ``"interrupted"``.
- A NaN/inf loss stops training with the step where it happened (nothing is saved after it).
  Losses and metrics stay on the device and are read once per ``log_every`` steps (and before
  every checkpoint), so a GPU step never waits for the host.
- ``metrics.jsonl`` gets a line every ``log_every`` steps; tqdm shows images/s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from .atomic import ZIP, atomic_output, os_error, run_lock
from .checks import bad, check_device, check_range, check_sgd
from .distributed import init_distributed, resolve_device
from .errors import FastSSLError
from .machine import cpu_bf16_matmul
from .progress import bar as progress_bar
from .signals import deferred

CKPT_FORMAT = "fastssl-ckpt-1"


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    milestones: list[int] = field(default_factory=lambda: [15, 30, 45])  # epochs where lr *= gamma
    gamma: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    # step: lr *= gamma at each milestone; cosine: lr * (1 + cos(pi * epoch / epochs)) / 2 an
    # epoch, down to near 0 in the last (milestones and gamma unused; a longer `epochs` on
    # resume stretches what is left of the curve)
    schedule: str = "step"

    def check(self, where: str = "") -> None:
        if self.name not in ("sgd", "adam"):
            bad(f"{where}name", "must be sgd or adam", self.name)
        if self.schedule not in ("step", "cosine"):
            bad(f"{where}schedule", "must be step or cosine", self.schedule)
        check_sgd(where, self)
        if len(self.betas) != 2:
            bad(f"{where}betas", "must be two numbers", self.betas)
        for i, b in enumerate(self.betas):
            check_range(f"{where}betas[{i}]", b, 0, 1, hi_open=True)


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 192
    optim: OptimConfig = field(default_factory=OptimConfig)
    amp: str = "auto"  # auto | bf16 | fp16 | off
    compile: str = "auto"  # auto | on | off
    layout: str = "channels_last"  # channels_last | contiguous
    device: str = "auto"
    ckpt_every: int = 1000
    log_every: int = 20
    seed: int = 0
    steps_per_epoch: int = 0  # 0: the data's full length
    resume: bool = False
    progress: bool = True

    def check(self, where: str = "") -> None:
        for name in ("epochs", "batch_size", "ckpt_every", "log_every"):
            if getattr(self, name) < 1:
                bad(f"{where}{name}", "must be >= 1", getattr(self, name))
        if self.steps_per_epoch < 0:
            bad(f"{where}steps_per_epoch", "must be >= 0 (0: the whole data)", self.steps_per_epoch)
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            bad(f"{where}amp", "must be auto, bf16, fp16 or off", self.amp)
        if self.compile not in ("auto", "on", "off"):
            bad(f"{where}compile", "must be auto, on or off", self.compile)
        if self.layout not in LAYOUTS:
            bad(f"{where}layout", "must be channels_last or contiguous", self.layout)
        check_device(f"{where}device", self.device)
        if self.seed < 0:
            bad(f"{where}seed", "must be >= 0", self.seed)


LAYOUTS = ("channels_last", "contiguous")


def pick_amp(amp: str, device: torch.device) -> str:
    """``auto`` made concrete for ``device`` (bf16, fp16 or off)."""
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise FastSSLError(f"amp must be auto, bf16, fp16 or off, got {amp!r}")
    if amp != "auto":
        return amp
    return "bf16" if device.type == "cuda" or cpu_bf16_matmul() else "off"


def pick_compile(compile: str, device: torch.device) -> bool:
    return compile == "on" or (compile == "auto" and device.type == "cuda")


def resolve_amp(amp: str, device: torch.device):
    """(autocast dtype or None, use GradScaler)."""
    amp = pick_amp(amp, device)
    if amp == "off":
        return None, False
    if amp == "fp16":
        return torch.float16, device.type == "cuda"
    return torch.bfloat16, False


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` through a temporary file: the previous checkpoint stays valid until the
    new one is complete; a failed write (a full disk) is one line."""

    with atomic_output(path, replace=ZIP, what="checkpoint") as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # torch reports a failed write as RuntimeError, without errno
            free = shutil.disk_usage(tmp.parent).free
            why = "no space left on device" if free < (1 << 20) else str(e).splitlines()[0]
            raise FastSSLError(f"could not write {path}: {why}; the previous checkpoint is kept") from None


def load_checkpoint(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FastSSLError(f"checkpoint not found: {p}")
    _check_crc(p)
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:  # unpickling errors, truncated zip, foreign files
        raise FastSSLError(
            f"{p} is not a readable fastssl checkpoint (truncated, damaged or another kind of file)"
        ) from None
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise FastSSLError(f"{p} is not a fastssl checkpoint (format {CKPT_FORMAT} expected)")
    return ck


def _check_crc(p: Path) -> None:
    """torch.save writes a zip archive with a CRC-32 of every record, which torch.load does
    not check: read every record once and compare (a changed byte in the weights is found)."""

    try:
        with zipfile.ZipFile(p) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return  # not a zip at all: torch.load says so in its words below
    except RuntimeError:
        bad = "?"
    if bad is not None:
        raise FastSSLError(f"{p} is damaged: record {bad} fails its checksum; use another checkpoint")


class _Ctx:
    """What a method's train_step sees: autocast and one optimiser step per loss."""

    def __init__(self, trainer):
        self.t = trainer
        self.clock = None  # a callable told "forward", "backward", "optimiser" as each ends (bench)

    def autocast(self):
        t = self.t
        if t.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(t.device.type, dtype=t.amp_dtype)

    def step(self, loss: torch.Tensor, name: str = "main") -> None:
        t = self.t
        # checked later, in one read (Trainer.check_finite): no host sync per step
        t._pending.append((loss.detach(), t.epoch, t.step, t.global_step))
        opt, clock = t.optims[name], self.clock
        if clock:
            clock("forward")
        opt.zero_grad(set_to_none=True)
        if t.scaler is not None:
            t.scaler.scale(loss).backward()
            if clock:
                clock("backward")
            t.scaler.step(opt)
            t.scaler.update()
        else:
            loss.backward()
            if clock:
                clock("backward")
            opt.step()
        if clock:
            clock("optimiser")

    @property
    def device(self):
        return self.t.device

    @property
    def data(self):
        return self.t.data

    @property
    def optims(self) -> dict:
        return self.t.optims

    def log(self, rec: dict) -> None:
        """A line in metrics.jsonl (rank 0), e.g. DeepCluster's clustering statistics."""
        self.t.log(rec)

    def check_stop(self) -> None:
        """For long work between two steps (an epoch's start: DeepCluster's features of its whole
        dataset): :class:`StopRequested` once a stop signal came, so that the run stops within a
        batch instead of at the next step. Single process only: under DDP the ranks agree on a
        stop between steps, where they all are."""
        flag = self.t._stop_flag
        if self.t.world == 1 and flag is not None and flag["n"]:
            raise StopRequested


class StopRequested(Exception):
    """A stop signal came during work between steps (see :meth:`_Ctx.check_stop`)."""


# recipe keys whose change keeps a resume exact (the length of the run, how often it logs and
# saves, where and how fast it runs, where a file lies that the recipe records by content as
# well: distill's teacher); any other change is refused unless allowed
RESUMABLE = frozenset(
    {"epochs", "ckpt_every", "log_every", "workers", "device", "compile", "layout", "progress", "resume", "teacher"}
)


def flat(d: dict, prefix: str = "") -> dict:
    """A nested dict as ``{"a.b.c": value}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# facts of a run that older versions did not record and that have no default: a run recorded
# without one is taken as it is (one recorded with one is compared)
RECORDED_LATER = {"mono.source_sha256"}


def recipe_changes(old: dict, new: dict, defaults: dict | None = None) -> dict:
    """``{key: [old, new]}`` for every key of two recorded recipes that differs and matters
    for an exact resume. A key the old recipe lacks and the new one holds at its value in
    ``defaults`` (nested as the recipe) is no change: a later version added it, with the
    behaviour the old run had. Every section's ``optim`` has :class:`OptimConfig`'s defaults
    besides (e.g. ``schedule = "step"``, the only schedule before it was a key). A key of
    :data:`RECORDED_LATER` the old recipe lacks is no change either."""
    optim = dataclasses.asdict(OptimConfig())
    d = {k: {"optim": optim} for k, v in new.items() if isinstance(v, dict) and isinstance(v.get("optim"), dict)}
    a, b, d = flat(old), flat(new), {**flat(d), **flat(defaults or {})}
    return {
        k: [a.get(k), b.get(k)]
        for k in sorted({*a, *b})
        if a.get(k) != b.get(k)
        and k.rpartition(".")[2] not in RESUMABLE
        and not (k not in a and k in d and b[k] == d[k])
        and not (k not in a and k in RECORDED_LATER)
    }


class Trainer:
    """``recipe``: the run's recipe values as a nested dict, recorded in the checkpoint; a
    resume with other values (beyond :data:`RESUMABLE`) is refused naming them, or, with
    ``allow_changes``, taken and logged as a ``recipe_changed`` line."""

    def __init__(
        self,
        method,
        data,
        cfg: TrainConfig,
        out_dir: str | os.PathLike,
        recipe: dict | None = None,
        allow_changes: bool = False,
    ):
        self.method, self.data, self.cfg = method, data, cfg
        self.recipe, self.allow_changes = recipe, allow_changes
        self._changed: dict = {}
        self._tb = None  # TensorBoard writer: None until the first line, False without the package
        self.out = Path(out_dir)
        self.device = resolve_device(cfg.device)
        self.rank, self.world = init_distributed(self.device)
        self.amp_dtype, use_scaler = resolve_amp(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.channels_last = cfg.layout == "channels_last"
        torch.manual_seed(cfg.seed)
        for k, net in method.nets.items():
            net.to(self.device)
            if self.channels_last:
                net.to(memory_format=torch.channels_last)
            method.nets[k] = net
        self.optims = {}
        for name, params in method.param_groups().items():
            o = cfg.optim
            if o.name == "sgd":
                self.optims[name] = torch.optim.SGD(
                    params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
                )
            elif o.name == "adam":
                self.optims[name] = torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
            else:  # a config built in code, past the recipe's checks
                raise FastSSLError(f"unknown optimiser {o.name!r}; choose sgd or adam")
        self._raw = dict(method.nets)  # unwrapped modules: what checkpoints hold
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            for k, net in method.nets.items():
                if any(p.requires_grad for p in net.parameters()):
                    method.nets[k] = DDP(net, device_ids=ids)
        self.compiled = pick_compile(cfg.compile, self.device)
        if self.compiled:
            for k, net in method.nets.items():
                method.nets[k] = torch.compile(net)
            method.compile_extra(torch.compile)
        self.setup = {
            "device": str(self.device),
            "threads": torch.get_num_threads() if self.device.type == "cpu" else None,
            "amp": pick_amp(cfg.amp, self.device),
            "compile": self.compiled,
            "layout": cfg.layout,
            "world_size": self.world,
        }
        self.epoch = self.step = self.global_step = 0
        self._pending: list = []  # (loss on the device, epoch, step, global step) not yet checked
        self.ctx = _Ctx(self)
        self._stop_flag = None  # the signal flag while fit() runs (see _Ctx.check_stop)
        self.ckpt_path = self.out / "ckpt.pt"

    # ------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        return {
            "format": CKPT_FORMAT,
            "method": self.method.name,
            "arch": dict(self.method.arch()),
            "nets": {k: v.state_dict() for k, v in self._raw.items()},
            "optims": {k: v.state_dict() for k, v in self.optims.items()},
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "epoch": self.epoch,
            "step": self.step,
            "global_step": self.global_step,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "method_state": self.method.state_dict(),
            "config": dataclasses.asdict(self.cfg),
            "recipe": self.recipe,
            "setup": self.setup,
        }

    def check_finite(self) -> None:
        """Raise at the first NaN/inf loss since the last check (one device read)."""
        if not self._pending:
            return
        vals = torch.stack([p[0].float().reshape(()) for p in self._pending]).cpu()
        bad = (~torch.isfinite(vals)).nonzero()
        pending, self._pending = self._pending, []
        if len(bad):
            i = int(bad[0])
            _, epoch, step, gstep = pending[i]
            raise FastSSLError(
                f"loss became {vals[i].item()} at epoch {epoch} step {step} (global step {gstep}); "
                "lower the learning rate or check the data; the last checkpoint is still valid"
            )

    def save(self) -> None:
        self.check_finite()  # never checkpoint weights that a NaN step has touched
        if self.rank == 0:
            atomic_save(self.state(), self.ckpt_path)

    def restore(self, ck: dict) -> None:
        arch = dict(self.method.arch())
        if ck["method"] != self.method.name:
            raise FastSSLError(
                f"checkpoint {self.ckpt_path} is from another run ({ck['method']}); use a new --out folder"
            )
        if ck["arch"] != arch:
            if ck["arch"].get("trunk") != arch.get("trunk"):
                raise FastSSLError(
                    f"{self.out} holds the probes of another checkpoint (trunk {ck['arch'].get('trunk')}, "
                    f"now {arch.get('trunk')}); its results are kept: choose another --out"
                )
            keys = sorted(k for k in {*arch, *ck["arch"]} if arch.get(k) != ck["arch"].get(k))
            raise FastSSLError(
                f"checkpoint {self.ckpt_path} is from another run (another network: {', '.join(keys)} differ); "
                "use a new --out folder or the same recipe"
            )
        if self.recipe is not None and ck.get("recipe") is not None:
            changed = recipe_changes(ck["recipe"], self.recipe, self.method.recipe_defaults())
            if changed and not self.allow_changes:
                said = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in list(changed.items())[:4])
                more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
                raise FastSSLError(
                    f"cannot resume {self.ckpt_path} exactly: the recipe changed ({said}{more}); "
                    "give the same values, or pass `allow_changes` to continue with the new ones"
                )
            self._changed = changed
        for k, net in self._raw.items():
            net.load_state_dict(ck["nets"][k])
        if not any(k.endswith("optim.name") for k in self._changed):  # another optimiser starts afresh
            for k, o in self.optims.items():
                o.load_state_dict(ck["optims"][k])
        if self.scaler and ck["scaler"]:
            self.scaler.load_state_dict(ck["scaler"])
        self.epoch, self.step, self.global_step = ck["epoch"], ck["step"], ck["global_step"]
        torch.set_rng_state(ck["torch_rng"])
        if self.device.type == "cuda" and ck.get("cuda_rng"):
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        self.method.load_state_dict(ck.get("method_state", {}), self.ctx)

    # ---------------------------------------------------------------- loop
    def prepare(self, batch):
        """A batch in the layout the networks run in (the batch contract is channels-last)."""
        if self.channels_last:
            return batch
        x, y = batch
        return x.contiguous(), y

    def describe_setup(self) -> str:
        s = self.setup
        where = f"{s['device']}, {s['threads']} threads" if s["threads"] else s["device"]
        if s["world_size"] > 1:
            where += f", {s['world_size']} ranks"
        amp = {"off": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[s["amp"]]
        return f"{where}, {amp}, {'compiled' if s['compile'] else 'eager'}, {s['layout'].replace('_', '-')}"

    def lr_at(self, epoch: int) -> float:
        o = self.cfg.optim
        if o.schedule == "cosine":
            return o.lr * (1 + math.cos(math.pi * epoch / self.cfg.epochs)) / 2
        return o.lr * o.gamma ** sum(1 for m in o.milestones if epoch >= m)

    def log(self, rec: dict) -> None:
        """One whole line in metrics.jsonl: a write that fails (a full disk) is undone, so the
        file never holds half a line, and is one error line."""
        if self.rank != 0:
            return

        self._tensorboard(rec)
        line = (json.dumps({"global_step": self.global_step, **rec}) + "\n").encode()
        path = self.out / "metrics.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                done = 0
                while done < len(line):
                    done += os.write(fd, line[done:])
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise os_error(path, e) from None
        finally:
            os.close(fd)

    def _tensorboard(self, rec: dict) -> None:
        """The numbers of a metrics line as TensorBoard scalars (``OUT/tensorboard/``), where
        the optional ``tensorboard`` package is installed; nothing otherwise."""
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the optional extra is absent
                self._tb = False
                return
            self._tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.global_step or None)
        if self._tb is False:
            return
        for k, v in rec.items():
            if k not in ("epoch", "step") and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(f"{self.method.name}/{k}", v, self.global_step)
        self._tb.flush()

    def _trim_metrics(self) -> None:
        """After a resume: drop the lines logged after the checkpoint (they are logged again)."""
        path = self.out / "metrics.jsonl"
        if self.rank != 0 or not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by a kill
                continue
            at = (int(rec.get("epoch", 0)), int(rec.get("step", 0)))
            now = (self.epoch, self.step)
            # a step's line is logged before that step's checkpoint; an epoch's opening line
            # (a method's, e.g. clustering statistics) after the checkpoint that precedes it
            if (at <= now) if "step" in rec else (at < now):
                keep.append(line)

        with atomic_output(path) as tmp:
            tmp.write_text("".join(x + "\n" for x in keep))

    def _stop_requested(self, flag: dict | None) -> bool:
        """Whether a stop signal came (every rank agrees under DDP: read at log steps there)."""
        if flag is None:
            return False
        if self.world == 1:
            return flag["n"] > 0
        if self.global_step % self.cfg.log_every:
            return False
        t = torch.tensor([float(flag["n"] > 0)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def fit(self) -> str:
        """Train to the end; returns "done", or "interrupted" after Ctrl-C / SIGTERM (checkpoint
        saved as of the last completed step)."""
        self.out.mkdir(parents=True, exist_ok=True)
        lock = run_lock(self.out) if self.rank == 0 else contextlib.nullcontext()
        try:
            with lock, deferred("stopping after this step, then saving a checkpoint") as flag:
                self._stop_flag = flag
                return self._fit(flag)
        finally:
            if self._tb:
                self._tb.close()

    def _fit(self, flag) -> str:
        if self.cfg.resume and self.ckpt_path.exists():
            self.restore(load_checkpoint(self.ckpt_path))
            self._trim_metrics()
            if self._changed:
                self.log({"epoch": self.epoch, "step": self.step, "recipe_changed": self._changed})
        elif self.ckpt_path.exists() and not self.cfg.resume:
            raise FastSSLError(f"{self.ckpt_path} exists: pass `resume` to continue it, or choose a new `out`")
        else:  # a run that starts from step 0 logs every step again: lines of a killed start go
            self._trim_metrics()
        if self.cfg.progress and self.rank == 0:
            print(f"{self.method.name}: {self.describe_setup()}", file=sys.stderr, flush=True)
        for m in self.method.nets.values():
            m.train()
        n_steps = len(self.data)
        if self.cfg.steps_per_epoch:
            n_steps = min(n_steps, self.cfg.steps_per_epoch)
        if n_steps < 1:
            raise FastSSLError("the data gives no batch per epoch: lower the batch size or add data")
        try:
            while self.epoch < self.cfg.epochs:
                if self._stop_requested(flag):
                    return "interrupted"  # at an epoch boundary: its checkpoint is saved
                if self.step == 0:
                    try:
                        self.method.on_epoch_start(self.epoch, self.ctx)
                    except StopRequested:  # nothing of this epoch is trained: the boundary's checkpoint stands
                        return "interrupted"
                self.data.set_epoch(self.epoch)
                lr = self.lr_at(self.epoch)
                for o in self.optims.values():
                    for g in o.param_groups:
                        g["lr"] = lr
                bar = progress_bar(
                    total=n_steps,
                    initial=self.step,
                    desc=f"{self.method.name} epoch {self.epoch}",
                    unit="step",
                    enabled=self.cfg.progress and self.rank == 0,
                    leave=False,
                )
                t0, seen, acc_m, acc_n, wait = time.perf_counter(), 0, {}, 0, 0.0
                batches = islice(self.data.iter_from(self.step), n_steps - self.step)
                while True:
                    tw = time.perf_counter()
                    try:
                        batch = next(batches)
                        wait += time.perf_counter() - tw  # host time waiting for the batch
                    except StopIteration:
                        break
                    except Exception:  # loader workers stopped by the same Ctrl-C
                        if flag is not None and flag["n"]:
                            self.save()
                            return "interrupted"
                        raise
                    m = self.method.train_step(self.prepare(batch), self.ctx)
                    self.step += 1
                    self.global_step += 1
                    seen += batch[0].shape[0] * self.world
                    for k, v in m.items():  # summed where they are: read at the log step
                        acc_m[k] = acc_m.get(k, 0.0) + (v.detach() if isinstance(v, torch.Tensor) else v)
                    acc_n += 1
                    elapsed = max(time.perf_counter() - t0, 1e-9)
                    rate = seen / elapsed
                    bar.update(1)
                    if self.global_step % self.cfg.log_every == 0:
                        self.check_finite()
                        # the mean over the steps since the last line (fewer after an epoch start)
                        vals = {k: float(v) / acc_n for k, v in acc_m.items()}
                        acc_m, acc_n = {}, 0
                        bar.set_postfix(img_s=f"{rate:.0f}", **{k: f"{v:.3f}" for k, v in vals.items()})
                        self.log(
                            {
                                "epoch": self.epoch,
                                "step": self.step,
                                "lr": lr,
                                "img_per_s": round(rate, 1),
                                "data_wait": round(wait / elapsed, 3),  # share of the epoch so far
                                **vals,
                            }
                        )
                    if self.global_step % self.cfg.ckpt_every == 0:
                        self.save()
                    if self._stop_requested(flag):  # between steps: the state of the last completed one
                        bar.close()
                        self.save()
                        return "interrupted"
                bar.close()
                if self.cfg.progress and self.rank == 0 and not sys.stderr.isatty():  # a log: one line an epoch
                    elapsed = max(time.perf_counter() - t0, 1e-9)
                    print(
                        f"{self.method.name} epoch {self.epoch + 1}/{self.cfg.epochs}: {self.global_step} steps, "
                        f"{seen / elapsed:.0f} img/s, data wait {100 * wait / elapsed:.0f}%",
                        file=sys.stderr,
                        flush=True,
                    )
                self.epoch += 1
                self.step = 0
                self.save()
        except KeyboardInterrupt:  # no signal handler (not the main thread): saved where it stopped
            self.save()
            return "interrupted"
        self.check_finite()
        return "done"
