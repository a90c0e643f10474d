"""Executing a level graph: device, precision, seeds, logging, validation, checkpoints, DDP.

Everything here is about running, nothing about the maths. One *global step* is what
Betty calls a step: every bottom level takes one step, and a level's uppers are stepped
after it has taken ``unroll`` steps.

Run directory (``out``)::

    config.json            fully resolved settings, graph description and signature, versions
    metrics.jsonl          one line per logged step per level, plus validation lines
    checkpoint_latest.pt   every ``checkpoint_every`` steps, written atomically
    checkpoint_previous.pt the checkpoint before it (taken when checkpoint_latest.pt is damaged)
    checkpoint_best.pt     at the best value of the monitored validation metric
    tensorboard/           optional

Checkpoints are taken only when the graph is *at rest* (every level that is unrolled under
an upper has completed its inner loop), so that no partially recorded inner loop has to be
saved; with ``checkpoint_every`` not a multiple of the inner-loop length the checkpoint is
taken at the next step at rest.

Crash-exact resume: ``metrics.jsonl`` is flushed to disk with every checkpoint; on resume the
lines written after the checkpoint's step are dropped (they are written again as the run
redoes those steps) and temporaries of an interrupted checkpoint write are removed. A run
that already completed or stopped early is returned as it is, with a message, not trained on.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import platform
import random
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from betty.configs import EngineConfig
from betty.engine import Engine
from tqdm.auto import tqdm

from .checkpoint import (
    load_checkpoint,
    previous_path,
    remove_stale_temporaries,
    rng_state,
    save_atomic,
    set_rng_state,
)
from .doctor.audit import Auditor, AuditSettings
from .errors import CheckpointError, NonFiniteError, ResumeError
from .level import Level
from .monitoring import metric_mode
from .topology import Topology

__all__ = ["EarlyStopping", "RunResult", "Runner", "build_engine", "resolve_device", "run", "seed_everything"]

Validate = Callable[[Topology], dict[str, float]]
_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": None}


@dataclass
class EarlyStopping:
    """Stop after ``patience`` validations without an improvement larger than ``min_delta``."""

    patience: int
    min_delta: float = 0.0


@dataclass
class RunResult:
    """What a run did. ``losses[level]`` holds the loss of every real step of that level."""

    steps: int
    stop_reason: str
    best: dict[str, Any] | None
    last_validation: dict[str, Any] | None
    out: Path | None
    losses: dict[str, list[float]] = field(default_factory=dict)
    wall_time_s: float = 0.0


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> this rank's GPU if there is one, else CPU; ``cuda`` without a GPU is an error."""
    device = str(device)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device '{device}' was asked for but torch sees no CUDA device; use --device cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def _init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the torchrun process group if launched by torchrun (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "betty-ml", "numpy", "monai", "segmentation-models-pytorch", "albumentations", "medmlo"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


class _Engine(Engine):
    """Betty's Engine with the device and process group decided by medmlo's runner.

    Betty 0.2.1 assumes CUDA under its distributed strategies (it divides by
    ``torch.cuda.device_count()``); here CPU ranks with the gloo backend work too.
    """

    def __init__(self, problems: list[Level], dependencies: dict, device: torch.device):
        self._medmlo_device = device
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        config = EngineConfig(
            train_iters=0,
            logger_type="none",
            strategy="distributed" if distributed else "default",
            backend=torch.distributed.get_backend() if distributed else "nccl",
        )
        super().__init__(problems, config=config, dependencies=dependencies)

    def configure_systems(self) -> dict[str, Any]:
        if self._strategy == "distributed":
            self._world_size = torch.distributed.get_world_size()
            self._rank = torch.distributed.get_rank()
            self._local_rank = self._medmlo_device.index or 0
        self.device = self._medmlo_device
        return {
            "strategy": self._strategy,
            "backend": self._backend,
            "world_size": self._world_size,
            "rank": self._rank,
            "local_rank": self._local_rank,
        }


def build_engine(graph: Topology, device: torch.device) -> Engine:
    """Validate ``graph``, then translate it into Betty's ``Engine`` (``u2l``/``l2u`` dependencies), kept
    as ``graph.engine``. Start maps are checked here, once the levels reach each other by name."""
    graph.validate()
    graph.configure_levels()
    # Betty's Engine keeps problems in the given order; bottom levels first keeps its logs readable
    problems = sorted(graph.levels.values(), key=lambda lv: graph.depth(lv.name))
    graph.engine = _Engine(problems, graph.dependencies(), device)
    for level in graph.levels.values():
        if level.has_start:
            level.start_values()
    return graph.engine


class Runner:
    """Runs a graph step by step; :func:`run` is the one-call form.

    Args:
        graph: the validated program.
        steps: total global steps (a resumed run continues up to this number).
        out: run directory (None: nothing is written).
        device: "auto", "cpu", "cuda" or "cuda:N".
        seed: seeds Python/NumPy/torch at the start (plus the rank under DDP).
        deterministic: deterministic kernels (slower on GPU).
        precision: "fp32", "bf16" (autocast; CPU or GPU), "fp16" (autocast + loss scaling; GPU) or
            "fp64" (modules, batches and newly created tensors in double precision: what regression
            goldens use, so that they do not depend on the CPU's float32 kernels).
        validate: ``fn(graph) -> {metric: value}``, run on rank 0 with all modules in eval mode.
        valid_every: validate every N global steps (0: only at the end if ``validate`` is given).
        monitor, mode: metric that selects the best checkpoint ("max" or "min"); default: the
            first metric returned. Without ``mode`` the direction is told from a well-known name
            (loss, mse, mae, error, nll, distance... are minimised; acc, dice, iou, jaccard, psnr,
            ssim, auc... maximised, see :mod:`engines.monitoring`) and announced; any other name
            needs ``mode`` (refused here when ``monitor`` is given, else at the first validation).
        early_stopping: stop after this many validations without improvement.
        checkpoint_every: write ``checkpoint_latest.pt`` every N steps (0: only at the end).
        resume: continue the run in ``out`` from ``checkpoint_latest.pt``.
        progress: show a progress bar with each level's latest loss.
        tensorboard: also log to ``out/tensorboard``.
        config: extra settings recorded in ``config.json`` (e.g. a recipe's arguments).
        audit_every: audit every upper level's hypergradient at its first step and every N-th after it
            against the doctor's reference, logged as ``audit`` on its metrics line, warning once per
            path where it carries little or wrong signal; the run is not changed (0: no audit).
        audit: how to audit (:class:`engines.doctor.AuditSettings`: thresholds, trust check, levels).
    """

    def __init__(
        self,
        graph: Topology,
        steps: int,
        *,
        out: str | Path | None = None,
        device: str | torch.device = "auto",
        seed: int = 0,
        deterministic: bool = False,
        precision: str = "fp32",
        validate: Validate | None = None,
        valid_every: int = 0,
        monitor: str | None = None,
        mode: str | None = None,
        early_stopping: EarlyStopping | None = None,
        checkpoint_every: int = 0,
        resume: bool = False,
        progress: bool = True,
        tensorboard: bool = False,
        config: dict[str, Any] | None = None,
        audit_every: int = 0,
        audit: AuditSettings | None = None,
    ):
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(f"steps must be a positive integer (global steps to run), got {steps!r}")
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
        if resume and out is None:
            raise ValueError("resume=True needs out= (the run directory to continue); without it nothing was saved")
        for name, value in (
            ("valid_every", valid_every),
            ("checkpoint_every", checkpoint_every),
            ("audit_every", audit_every),
        ):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if validate is not None and not callable(validate):
            raise TypeError(f"validate must be a function graph -> {{metric: number}}, got {type(validate).__name__}")
        if mode not in (None, "max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self._mode_reason = None  # why the mode was told from the metric's name (announced once)
        if monitor is not None and mode is None:
            mode, self._mode_reason = metric_mode(monitor)
        if early_stopping is not None and validate is None:
            raise ValueError("early_stopping needs a validate function")
        if audit is not None and not isinstance(audit, AuditSettings):
            raise TypeError(f"audit must be engines.doctor.AuditSettings, got {type(audit).__name__}")
        self.graph = graph
        self.steps = int(steps)
        self.out = Path(out) if out is not None else None
        self.device = resolve_device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device (use bf16 on CPU)")
        self.seed, self.deterministic, self.precision = seed, deterministic, precision
        self.validate_fn, self.valid_every = validate, int(valid_every)
        self.monitor, self.mode = monitor, mode
        self.early_stopping = early_stopping
        self.checkpoint_every = int(checkpoint_every)
        self.resume, self.show_progress, self.use_tensorboard = resume, progress, tensorboard
        self.user_config = dict(config or {})
        self.audit_every, self.audit_settings = int(audit_every), audit
        self._auditor: Auditor | None = None
        self.step_count = 0
        self.stop_reason: str | None = None
        self.best: dict[str, Any] | None = None
        self.last_validation: dict[str, Any] | None = None
        self.bad_rounds = 0
        self.losses: dict[str, list[float]] = {}
        self._pending_checkpoint = False
        self._metrics_file = None
        self._tb = None
        self._bar = None
        self._started = False
        self._stop_reason = ""
        self._latest_step: int | None = None
        self._default_dtype: torch.dtype | None = None
        self._stop = False
        self._t0 = 0.0
        self.rank, self.world = 0, 1

    # ------------------------------------------------------------------ setup
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def audits(self) -> list[dict[str, Any]]:
        """Every audit done so far (``audit_every``): ``{"level", "step", "audit"}``, as logged."""
        return [] if self._auditor is None else list(self._auditor.audits)

    @property
    def audit_seconds(self) -> float:
        """Wall time the audit has taken so far (0 without ``audit_every``)."""
        return 0.0 if self._auditor is None else self._auditor.seconds

    def start(self) -> None:
        """Seed, build the engine, prepare the run directory, restore a checkpoint if resuming."""
        self.rank, self.world = _init_distributed(self.device)
        seed_everything(self.seed + self.rank, self.deterministic)
        build_engine(self.graph, self.device)
        if self.precision == "fp64":
            self._default_dtype = torch.get_default_dtype()
            torch.set_default_dtype(torch.float64)
        for level in self.graph.levels.values():
            level.configure_precision(_PRECISIONS[self.precision], self.device.type, float64=self.precision == "fp64")
        if self.out is not None:
            self._prepare_out()
        if not self.resume:  # every loss checked before any work (a resumed run already passed this)
            for level in self.graph.levels.values():
                level.preflight()
        if self.audit_every:
            self._auditor = Auditor(self.graph, self.audit_every, self.audit_settings)
            self._auditor.check(self.world)
        self._started = True
        self._t0 = time.perf_counter()
        self._bar = tqdm(
            total=self.steps,
            initial=self.step_count,
            disable=not (self.show_progress and self.is_main),
            dynamic_ncols=True,
            desc=self.graph.name,
        )

    def _prepare_out(self) -> None:
        latest = self.out / "checkpoint_latest.pt"
        if self.out.is_dir() and self.is_main:
            for tmp in remove_stale_temporaries(self.out):
                tqdm.write(f"[medmlo] removed {tmp}, left by an interrupted checkpoint write")
        if self.resume:
            self._restore(self._load_latest(latest))
        elif self.is_main:
            held = [p.name for p in (latest, previous_path(latest)) if p.exists()]
            if held:
                raise ResumeError(
                    f"run directory {self.out} already holds a run ({', '.join(held)}); pass resume=True "
                    "(--resume) to continue it, or choose another output directory"
                )
        if not self.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self._truncate_metrics()
        self._write_config()
        self._metrics_file = open(self.out / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        if self.use_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out / "tensorboard"))

    def _load_latest(self, latest: Path) -> dict[str, Any]:
        """``checkpoint_latest.pt``, or — if it is missing or damaged — the previous one, saying so."""
        previous = previous_path(latest)
        try:
            return load_checkpoint(latest, map_location=self.device)
        except (FileNotFoundError, CheckpointError) as err:
            if not previous.is_file():
                if isinstance(err, FileNotFoundError):
                    raise ResumeError(
                        f"cannot resume: {latest} does not exist (start a new run without --resume)"
                    ) from None
                raise ResumeError(
                    f"cannot resume {self.out}: {err}, and there is no {previous.name} to fall back on; "
                    "start a new run (another --out, or delete the folder)"
                ) from None
            try:
                state = load_checkpoint(previous, map_location=self.device)
            except CheckpointError as err_previous:
                raise ResumeError(f"cannot resume {self.out}: {err} and {err_previous}") from None
            message = (
                f"[medmlo] {err}; resuming from {previous.name} instead (step {state['step']}); "
                "the steps after it are run again"
            )
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            if self.is_main:
                tqdm.write(message)
            return state

    def _write_config(self) -> None:
        config = {
            "graph": self.graph.signature(),
            "description": self.graph.describe(),
            "run": {
                "steps": self.steps,
                "device": str(self.device),
                "seed": self.seed,
                "deterministic": self.deterministic,
                "precision": self.precision,
                "valid_every": self.valid_every,
                "monitor": self.monitor,
                "mode": self.mode,
                "early_stopping": asdict(self.early_stopping) if self.early_stopping else None,
                "checkpoint_every": self.checkpoint_every,
                "audit_every": self.audit_every,
                "world_size": self.world,
            },
            "config": self.user_config,
            "versions": _versions(),
        }
        tmp = self.out / ".config.json.tmp"
        tmp.write_text(json.dumps(config, indent=2, default=str))
        os.replace(tmp, self.out / "config.json")

    def _truncate_metrics(self) -> None:
        """A new run starts an empty log; a resumed one keeps the lines up to its checkpoint's step
        (later lines, and a line cut off by a crash, are dropped: those steps are run again)."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        kept = []
        if self.step_count > 0:
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a killed run may be partial
                if isinstance(entry, dict) and entry.get("step", 0) <= self.step_count:
                    kept.append(line)
        tmp = path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "step": self.step_count,
            "graph": self.graph.signature(),
            "levels": {name: lv.state_dict() for name, lv in self.graph.levels.items()},
            "rng": rng_state(),
            "runner": {
                "best": self.best,
                "bad_rounds": self.bad_rounds,
                "last_validation": self.last_validation,
                "losses": self.losses,
                "stop_reason": self.stop_reason,
            },
        }

    def _restore(self, state: dict[str, Any]) -> None:
        if state["graph"] != self.graph.signature():
            raise ResumeError(
                f"cannot resume {self.out}: the checkpoint was written by a different graph "
                f"(saved {json.dumps(state['graph'])[:400]}..., now {json.dumps(self.graph.signature())[:400]}...)"
            )
        for name, level in self.graph.levels.items():
            level.load_state_dict(state["levels"][name])
        set_rng_state(state["rng"])
        runner = state["runner"]
        self.best, self.bad_rounds = runner["best"], runner["bad_rounds"]
        self.last_validation = runner["last_validation"]
        self.losses = {k: list(v) for k, v in runner["losses"].items()}
        self.stop_reason = runner.get("stop_reason")
        self.step_count = int(state["step"])
        self._latest_step = self.step_count
        self.graph.engine.global_step = self.step_count

    def at_rest(self) -> bool:
        """True when every level below an upper has completed its inner loop."""
        return all(lv.count % lv.unroll == 0 for name, lv in self.graph.levels.items() if self.graph.uppers(name))

    def save_checkpoint(self, name: str = "checkpoint_latest.pt") -> Path | None:
        """Write a checkpoint atomically; ``checkpoint_latest.pt`` keeps its predecessor as
        ``checkpoint_previous.pt``, and the metric lines logged so far are flushed to disk first."""
        if self.out is None or not self.is_main:
            return None
        if self._metrics_file is not None:
            self._metrics_file.flush()
            os.fsync(self._metrics_file.fileno())
        latest = name == "checkpoint_latest.pt"
        # a second write at the same step (e.g. the end-of-run one) replaces latest and keeps the older previous
        keep_previous = latest and self._latest_step != self.step_count
        path = save_atomic(self.state_dict(), self.out / name, keep_previous=keep_previous)
        if latest:
            self._latest_step = self.step_count
        return path

    # ------------------------------------------------------------------ stepping
    def step(self) -> None:
        """One global step, with logging, scheduled validation and checkpointing."""
        if not self._started:
            self.start()
        self.step_count += 1
        engine = self.graph.engine
        engine.global_step = self.step_count
        if self._auditor is not None:
            self._auditor.before_step()
        try:
            engine.train_step()
        except NonFiniteError as err:
            self._on_non_finite(err)
            raise
        if self._auditor is not None:
            self._auditor.after_step()
        self._drain_logs()
        requests = [f"{n}: {lv.stop_request}" for n, lv in self.graph.levels.items() if lv.stop_request]
        if requests:
            self._stop, self._stop_reason = True, "; ".join(requests)
        if self.checkpoint_every and self.step_count % self.checkpoint_every == 0:
            self._pending_checkpoint = True
        if self.validate_fn is not None and self.valid_every and self.step_count % self.valid_every == 0:
            self.validate()
        if self._pending_checkpoint and self.at_rest():
            self.save_checkpoint()
            self._pending_checkpoint = False
        self._bar.update(1)

    def _drain_logs(self) -> None:
        postfix = {}
        for name, level in self.graph.levels.items():
            for entry in level.step_log:
                self.losses.setdefault(name, []).append(entry["loss"])
                self._write_metric(entry)
                postfix[name] = f"{entry['loss']:.4g}"
            level.step_log.clear()
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)

    def _write_metric(self, entry: dict[str, Any]) -> None:
        if self._metrics_file is not None:
            self._metrics_file.write(json.dumps(entry, default=float) + "\n")
        if self._tb is not None:
            for key, value in _flatten(entry):
                if key not in ("level", "step", "local_step") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{entry['level']}/{key}", value, entry["step"])

    def _on_non_finite(self, err: NonFiniteError) -> None:
        latest = self.out / "checkpoint_latest.pt" if self.out is not None else None
        kept = (
            f"the last good checkpoint is {latest}"
            if latest is not None and latest.exists()
            else "no checkpoint was written"
        )
        message = f"stopped: {err}; {kept} (not overwritten)"
        self._write_metric(
            {
                "level": "run",
                "step": self.step_count,
                "event": "non_finite",
                "failed_level": err.level,
                "what": err.what,
                "message": message,
            }
        )
        if self.is_main:
            tqdm.write(message)
        self.close()

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        """Validate now on rank 0, then share the outcome with every rank: best checkpoint, plateau
        schedulers and early stopping then act identically everywhere."""
        metrics: dict[str, float] = {}
        stop = False
        if self.is_main:
            self.graph.engine.eval()
            try:
                metrics = _numbers(self.validate_fn(self.graph))
            finally:
                self.graph.engine.train()
            stop = self._judge(metrics)
        if self.world > 1:
            shared = [metrics, stop, self.best, self.bad_rounds, self.monitor, self.mode]
            dist.broadcast_object_list(shared, src=0)
            metrics, stop, self.best, self.bad_rounds, self.monitor, self.mode = shared
            self.last_validation = {"step": self.step_count, "metrics": metrics}
        for level in self.graph.levels.values():
            if level.plateau_scheduler is not None:
                level.plateau_scheduler.step(metrics[self.monitor])
        self._stop = stop
        return metrics

    def _judge(self, metrics: dict[str, float]) -> bool:
        if not metrics:
            raise ValueError("validate() returned no metrics")
        if self.monitor is None:
            self.monitor = next(iter(metrics))
        if self.mode is None:
            self.mode, self._mode_reason = metric_mode(self.monitor)
        if self._mode_reason is not None:
            message = f"[medmlo] best checkpoint: mode='{self.mode}' for '{self.monitor}' ({self._mode_reason})"
            tqdm.write(message, file=sys.stderr)  # a diagnostic, like the progress bar: stdout stays the caller's
            self._mode_reason = None
        if self.monitor not in metrics:
            raise KeyError(f"validation returned {sorted(metrics)} but the monitored metric is '{self.monitor}'")
        value = metrics[self.monitor]
        self.last_validation = {"step": self.step_count, "metrics": metrics}
        self._write_metric({"level": "validation", "step": self.step_count, **metrics})
        if self._tb is not None:
            for key, v in metrics.items():
                self._tb.add_scalar(f"validation/{key}", v, self.step_count)
        delta = self.early_stopping.min_delta if self.early_stopping else 0.0
        best_value = None if self.best is None else self.best["metrics"][self.monitor]
        improved = math.isfinite(value) and (
            best_value is None or (value > best_value + delta if self.mode == "max" else value < best_value - delta)
        )
        if improved:
            self.best = {"step": self.step_count, "metrics": metrics}
            self.bad_rounds = 0
            self.save_checkpoint("checkpoint_best.pt")
        else:
            self.bad_rounds += 1
        self._bar.set_postfix({self.monitor: f"{value:.4g}"}, refresh=False)
        return self.early_stopping is not None and self.bad_rounds >= self.early_stopping.patience

    # ------------------------------------------------------------------ whole run
    def run(self) -> RunResult:
        """Step until ``steps``, early stopping or a level's stop request; validate and checkpoint at the
        end. A resumed run that had already finished (or stopped early) is returned as it was."""
        if not self._started:
            self.start()
        if self.stop_reason == "early_stopping" or (self.stop_reason and self.step_count >= self.steps):
            message = (
                f"[medmlo] {self.out} already finished ({self.stop_reason} at step {self.step_count}); "
                "returning it without training"
            )
            if self.is_main:
                tqdm.write(message)
            return self._result(self.stop_reason)
        reason = "completed"
        while self.step_count < self.steps:
            self.step()
            if self._stop:
                reason = self._stop_reason or "early_stopping"
                break
        validated_now = self.last_validation is not None and self.last_validation["step"] == self.step_count
        if self.validate_fn is not None and not validated_now and reason == "completed":
            self.validate()
        self.stop_reason = reason
        if self.at_rest():
            self.save_checkpoint()
        return self._result(reason)

    def _result(self, reason: str) -> RunResult:
        result = RunResult(
            steps=self.step_count,
            stop_reason=reason,
            best=self.best,
            last_validation=self.last_validation,
            out=self.out,
            losses=self.losses,
            wall_time_s=time.perf_counter() - self._t0,
        )
        self.close()
        return result

    def close(self) -> None:
        if self._default_dtype is not None:
            torch.set_default_dtype(self._default_dtype)
            self._default_dtype = None
        if self._bar is not None:
            self._bar.close()
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _numbers(metrics: Any) -> dict[str, float]:
    """Validation output as ``{name: float}``, or a clear error naming what is wrong."""
    if not isinstance(metrics, dict) or not metrics:
        raise ValueError(f"validate() must return a non-empty dict {{metric name: number}}, got {metrics!r}"[:300])
    out = {}
    for key, value in metrics.items():
        if torch.is_tensor(value) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(
                f"validate() returned {type(value).__name__} {value!r} for metric '{key}'; "
                "every metric must be a number"[:300]
            )
        out[str(key)] = float(value)
    return out


def _flatten(entry: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"hypergradient": {"a<-b": {"norm": 1}}}`` -> ``[("hypergradient/a<-b/norm", 1)]``."""
    out = []
    for key, value in entry.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(_flatten(value, f"{name}/"))
        else:
            out.append((name, value))
    return out


def run(graph: Topology, steps: int, **kwargs: Any) -> RunResult:
    """Run ``graph`` for ``steps`` global steps; see :class:`Runner` for the keyword arguments."""
    return Runner(graph, steps, **kwargs).run()
