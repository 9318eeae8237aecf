"""One job as N processes: DistributedDataParallel, started with PyTorch's own elastic launcher.

Who does what:

- ``launch`` runs in the caller (a worker's pool child, or ``python -m training run``). It starts N ranks
  with ``torch.distributed.launcher.api.elastic_launch``, the API behind ``torchrun``: a c10d rendezvous on a
  TCPStore at 127.0.0.1 and a free port, no restarts (a rank that dies ends the attempt; the caller resumes
  the job from its last checkpoint, as it does for a lost worker). Spawned ranks, never forked: CUDA and the
  caller's threads do not survive a fork.
- Every rank runs the same ``Trainer`` with a ``Cluster``: the model wrapped in ``DistributedDataParallel``
  (NCCL on GPUs, gloo on the CPU), each global batch split between the ranks (``Shard``), training and
  evaluation sums all-reduced, and the stop probe agreed by an all-reduce so that every rank stops at the
  same step. The module under DDP is the plain model, so a checkpoint is the same file at any process count.
- Rank 0 alone writes checkpoints, the model card and weights, and relays its callbacks to the caller
  through a queue (``RelayCallbacks``); the caller answers ``should_stop`` through a shared integer.

Across hosts (not built): the same launcher with ``min_nodes = max_nodes = H`` and ``rdzv_endpoint`` a
host:port every node reaches (torchrun's c10d rendezvous); see the README.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.elastic.multiprocessing.api import SignalException, _terminate_process_handler
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
from torch.nn.parallel import DistributedDataParallel

from training.callbacks import Callbacks, CheckpointInfo, RunInfo, StepMetrics, Stop
from training.decoding import available_cpus
from training.errors import DeviceUnavailable, TrainingError
from training.settings import EngineSettings, engine_settings
from training.spec import Spec

log = logging.getLogger(__name__)

_STOP_CODES: dict[Stop | None, int] = {None: 0, Stop.CANCEL: 1, Stop.PREEMPT: 2}
_STOPS = {code: stop for stop, code in _STOP_CODES.items()}
CHECKPOINT_ACK_SECONDS = 600.0  # the caller copies a checkpoint aside before rank 0 may delete it
# How long the launcher may take to return once a rank is dead or every rank has finished, before the watchdog
# takes it for stuck (``_Watchdog``). Torch's agent notices a dead rank within its monitor interval and gives
# the others up to its shutdown timeout (30 s) to end.
STUCK_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class Shard:
    """This rank's part of every batch: the ``rank``-th of ``world`` near-equal, contiguous slices."""

    rank: int = 0
    world: int = 1

    def bounds(self, size: int) -> tuple[int, int]:
        return size * self.rank // self.world, size * (self.rank + 1) // self.world

    def take(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.world == 1:
            return images, labels
        low, high = self.bounds(labels.shape[0])
        return images[low:high], labels[low:high]


ONE_PROCESS = Shard()  # the whole of every batch


def global_batch_size(num_images: int, batch_size: int, index: int) -> int:
    """Images in training batch ``index`` of an epoch (the last one may be short; a set smaller than one
    batch is one batch)."""
    return max(0, min(batch_size, num_images - index * batch_size))


def resolve_devices(devices: int | str) -> int:
    """``training.devices`` as a number of processes: "all" is every visible GPU, or 1 on a CPU-only host."""
    if devices == "all":
        return max(1, torch.cuda.device_count())
    return int(devices)


class Cluster:
    """The ranks of one run, as the fit loop sees them. ``Cluster()`` is a single process: every hook is a no-op."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.shard = Shard(rank, world_size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, on_cuda: bool) -> Cluster:
        """A rank started by the elastic launcher: its process group (NCCL on GPUs, else gloo) from RANK,
        WORLD_SIZE and MASTER_ADDR/PORT, which the launcher sets."""
        rank, world, local = (int(os.environ[key]) for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        if not dist.is_initialized():
            backend = "nccl" if on_cuda else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(local)
            dist.init_process_group(backend)
        return cls(rank, world, local)

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: its own GPU (LOCAL_RANK) on CUDA."""
        if self.active and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module the training step calls: ``model`` itself, or under DDP. The trainable set must not change
        under a wrapper: call again after a freeze schedule changes it."""
        if not self.active:
            return model
        if not any(p.requires_grad for p in model.parameters()):
            return model  # nothing trains (a frozen epoch): nothing to reduce
        ids = [device.index] if device.type == "cuda" else None
        # Buffers stay rank-local while training (batch norm uses the batch's own statistics there);
        # evaluation takes rank 0's (sync_buffers).
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)

    def sync_batchnorm(self, model: nn.Module, device: torch.device) -> nn.Module:
        if device.type != "cuda":
            raise TrainingError(
                "training.sync_batchnorm needs CUDA devices (SyncBatchNorm has no CPU kernel)", code="invalid_spec"
            )
        converted: nn.Module = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return converted

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (batch norm running statistics) on every rank: each rank's own saw its shards only,
        and rank 0's are the ones a checkpoint keeps."""
        if self.active:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_max(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def agree_stop(self, stop: Stop | None, device: torch.device) -> Stop | None:
        """The stop that any rank saw (rank 0 asks the caller; preempt wins over cancel), the same on every rank:
        each rank calls this at the same step."""
        if not self.active:
            return stop
        code = torch.tensor(_STOP_CODES[stop], device=device)
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        return _STOPS[int(code.item())]

    def no_sync(self, module: nn.Module, accumulate: bool) -> contextlib.AbstractContextManager[Any]:
        """While accumulating gradients over micro-batches, skip DDP's all-reduce until the last one."""
        no_sync = getattr(module, "no_sync", None)  # DistributedDataParallel's
        if accumulate and no_sync is not None:
            context: contextlib.AbstractContextManager[Any] = no_sync()
            return context
        return contextlib.nullcontext()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def check_shards(cluster: Cluster, num_images: int, batch_size: int) -> None:
    """Every rank needs images in every training batch (DDP reduces each backward on all ranks)."""
    if not cluster.active:
        return
    batches = -(-num_images // batch_size)
    smallest = min(global_batch_size(num_images, batch_size, i) for i in {0, max(batches - 1, 0)})
    if smallest < cluster.world_size:
        raise TrainingError(
            f"training.devices: {cluster.world_size} processes need at least {cluster.world_size} images in every "
            f"batch; the smallest training batch has {smallest} (raise data.batch_size or use fewer devices)",
            code="invalid_spec",
        )


# --- the launcher, in the caller ----------------------------------------------------------------------


@dataclass(frozen=True)
class RankJob:
    """Everything a rank needs to build its ``Trainer``: plain, picklable values (ranks are spawned)."""

    spec: dict[str, Any]
    out_dir: Path
    data_path: Path | None = None
    init_from: Path | None = None
    resume_from: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)


class RanksLost(Exception):
    """A rank died (killed, out of host memory, an unexpected exception): the attempt is over; the job resumes
    from its last checkpoint."""


class RelayCallbacks(Callbacks):
    """Rank 0's callbacks: every event goes to the caller's queue; a checkpoint waits for the caller's ack
    (it copies the file aside before retention may delete it); ``should_stop`` reads the caller's answer."""

    def __init__(self, events: Any, acks: Any, stop_code: Any) -> None:
        self.events = events
        self.acks = acks
        self.stop_code = stop_code

    def on_start(self, info: RunInfo) -> None:
        self.events.put(("on_start", info))

    def on_step(self, metrics: StepMetrics) -> None:
        self.events.put(("on_step", metrics))

    def on_epoch(self, metrics: dict[str, Any]) -> None:
        self.events.put(("on_epoch", metrics))

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        self.events.put(("on_checkpoint", info))
        self.acks.get(timeout=CHECKPOINT_ACK_SECONDS)

    def should_stop(self) -> Stop | None:
        return _STOPS.get(int(self.stop_code.value))


def fit_on_devices(
    spec: Any,
    out_dir: Path,
    *,
    callbacks: Callbacks,
    data_path: Path | None = None,
    init_from: Path | None = None,
    resume_from: Path | None = None,
    settings: Any = None,
) -> Any:
    """Run ``spec`` on ``training.devices`` processes: in this process for one, through ``launch`` for more."""
    from training.engine import Trainer  # here: training.engine imports this module

    settings = settings or engine_settings()
    devices = resolve_devices(spec.training.devices)
    gpus = torch.cuda.device_count() if spec.training.device != "cpu" else 0
    if 0 < gpus < devices:
        raise DeviceUnavailable(f"training.devices: {devices} asked for, and this worker has {gpus} GPUs")
    if devices == 1:
        trainer = Trainer(
            spec, out_dir, data_path=data_path, init_from=init_from, callbacks=callbacks, settings=settings
        )
        return trainer.fit(resume_from=resume_from)
    job = RankJob(
        spec=spec.model_dump(mode="json"),
        out_dir=Path(out_dir),
        data_path=data_path,
        init_from=init_from,
        resume_from=resume_from,
        settings=settings.model_dump(),
    )
    return launch(job, devices, callbacks)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _error_file(out_dir: Path, rank: int) -> Path:
    return out_dir / "ranks" / f"error-{rank}.json"


def run_rank(job: RankJob, events: Any, acks: Any, stop_code: Any) -> Any:
    """A rank's entry point (module level, so that spawn can find it). Returns rank 0's ``FitResult``.

    A ``TrainingError`` is written to ``ranks/error-<rank>.json`` before it ends the process, so that the
    caller reports it as the run's error (a bad spec, a non-finite loss) and does not retry the job."""
    from training.engine import Trainer  # here: training.engine imports this module

    spec = Spec.model_validate(job.spec)
    on_cuda = spec.training.device != "cpu" and torch.cuda.is_available()
    cluster = Cluster.from_environment(on_cuda)
    folder = job.out_dir / "ranks"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{cluster.rank}.pid").write_text(str(os.getpid()))  # for an operator (and a test) to find a rank
    if not on_cuda:
        torch.set_num_threads(max(1, available_cpus() // cluster.world_size))  # ranks share the host's cores
    try:
        callbacks: Callbacks = RelayCallbacks(events, acks, stop_code) if cluster.is_main else Callbacks()
        trainer = Trainer(
            spec,
            job.out_dir,
            data_path=job.data_path,
            init_from=job.init_from,
            callbacks=callbacks,
            settings=EngineSettings(**job.settings),
            cluster=cluster,
        )
        result = trainer.fit(resume_from=job.resume_from)
    except TrainingError as error:
        _error_file(job.out_dir, cluster.rank).write_text(
            json.dumps({"code": error.code, "message": error.message, "type": type(error).__name__})
        )
        raise
    except torch.cuda.OutOfMemoryError:
        message = f"rank {cluster.rank}: out of GPU memory: lower data.batch_size (and raise training.grad_accum_steps)"
        _error_file(job.out_dir, cluster.rank).write_text(
            json.dumps({"code": "out_of_memory", "message": message, "type": "OutOfMemoryError"})
        )
        raise
    finally:
        cluster.close()
    if cluster.is_main:
        events.put(("result", result))  # the caller has it even if the launcher never returns it (_Watchdog)
    _done_file(job.out_dir, cluster.rank).write_text("")  # this rank's work is over: only its exit is left
    _test_kill_after_return(cluster.rank)
    return result if cluster.is_main else None


def _done_file(out_dir: Path, rank: int) -> Path:
    return out_dir / "ranks" / f"{rank}.done"


def _test_kill_after_return(rank: int) -> None:
    """FOR TESTS ONLY (``FT_TEST_KILL_RANK_AFTER_RETURN=<rank>``; production never sets it): that rank is
    SIGKILLed right after it returned, at the moment the launcher wakes it to exit, before it acknowledges the
    wake-up. Torch's agent then waits for the acknowledgement forever (``multiprocessing`` ``Event.set`` ->
    ``Condition.notify`` waits on every sleeper it woke): the deadlock ``_Watchdog`` ends. Deterministic, where
    a kill from outside lands in that window only by chance."""
    if os.environ.get("FT_TEST_KILL_RANK_AFTER_RETURN") != str(rank):
        return
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_name != "_wrap":  # torch's rank wrapper, which calls run_rank
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        raise RuntimeError("FT_TEST_KILL_RANK_AFTER_RETURN: not under torch's elastic _wrap")
    finished = frame.f_locals["queue_finished_reading_event"]  # the Event the rank waits on once it returned
    finished._cond._woken_count.release = lambda: os.kill(os.getpid(), signal.SIGKILL)


def launch(
    job: RankJob, devices: int, callbacks: Callbacks, *, poll_seconds: float = 0.05, grace: float | None = None
) -> Any:
    """Run ``job`` as ``devices`` processes and return rank 0's ``FitResult``. Rank 0's events reach
    ``callbacks`` on a thread of this process, which also answers the ranks' stop probe; another thread
    (``_Watchdog``) ends a launcher that hangs once a rank is dead or every rank has finished.

    Raises the ``TrainingError`` a rank reported, or ``RanksLost`` when a rank died without one."""
    context = multiprocessing.get_context("spawn")
    events, acks = context.Queue(), context.Queue()
    stop_code = context.Value("i", 0)
    ranks = job.out_dir / "ranks"
    for pattern in ("error-*.json", "*.pid", "*.done"):  # an earlier launch's, in the same folder
        for stale in ranks.glob(pattern) if ranks.is_dir() else []:
            stale.unlink()
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=devices,
        run_id=f"ft-{os.getpid()}-{threading.get_ident()}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        max_restarts=0,  # a rank that dies ends the attempt; the job resumes from its checkpoint
        monitor_interval=0.2,
        start_method="spawn",
        local_addr="127.0.0.1",
        # On GPUs each rank sees only its own (CUDA_VISIBLE_DEVICES per rank, taken from the worker's list) as
        # device 0, and LOCAL_RANK is 0: a rank cannot allocate on a neighbour's GPU.
        virtual_local_rank=job.spec["training"]["device"] != "cpu" and torch.cuda.is_available(),
    )
    relay = _Relay(events, acks, stop_code, callbacks, poll_seconds)
    relay.start()
    watchdog = _Watchdog(ranks, devices, STUCK_GRACE_SECONDS if grace is None else grace)
    watchdog.start()
    try:
        try:
            with _may_have_children():
                results = elastic_launch(config, run_rank)(job, events, acks, stop_code)
        finally:
            watchdog.finish()  # no signal from it once this returns
    except ChildFailedError as failure:
        relay.finish()
        if watchdog.all_finished() and relay.result is not None:
            # Every rank had finished (rank 0's artifacts written) when one died on its way out: the run is done.
            log.warning("a rank died after the run finished (%s); its result stands", failure)
            return relay.result
        raise _rank_error(job.out_dir, failure) from None
    except SignalException as signalled:  # the launcher's own handler: this process, or the watchdog, stopped it
        relay.finish()
        if watchdog.fired is None:
            raise RanksLost(f"the launcher got {signalled.sigval.name}: its ranks were stopped") from None
        if watchdog.all_finished() and relay.result is not None:
            return relay.result  # stuck after every rank had finished: the run itself is complete
        raise RanksLost(f"{watchdog.fired}; the launcher was stopped") from None
    finally:
        relay.finish()
    return results[0]


@contextlib.contextmanager
def _may_have_children() -> Any:
    """Lets a Celery pool child start the ranks. Billiard makes its pool child ``multiprocessing``'s current
    process, daemonic (``multiprocessing`` refuses to start a daemonic process's children) and with billiard's
    authkey, which the stdlib's spawn cannot pickle. While the launcher runs, the flag is lifted (it only guards
    that assertion here: billiard's parent keeps its own record) and the key is the stdlib's kind, same bytes."""
    from multiprocessing.process import AuthenticationString  # type: ignore[attr-defined]

    current = multiprocessing.current_process()
    config = current._config  # type: ignore[attr-defined]
    saved = dict(config)
    config["daemon"] = False
    config["authkey"] = AuthenticationString(bytes(current.authkey))
    try:
        yield
    finally:
        config.clear()
        config.update(saved)


def _exited(pid: int) -> bool:
    """Whether ``pid``, a child of this process (the launcher's rank), has ended; a zombie counts, and stays
    for the launcher to reap (WNOWAIT). A process that is not a child (already reaped) is not looked at."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return False


class _Watchdog(threading.Thread):
    """Ends a launcher that hangs. Torch's elastic agent (in this process, under ``elastic_launch``) can block
    forever: a rank SIGKILLed right after it returned its result, between being woken to exit and saying so,
    leaves the agent in ``Event.set`` -> ``Condition.notify`` waiting on a dead process (py-spy shows it), and
    the job's lease would be renewed forever. Every ``poll`` seconds this looks at the ranks (their pid files;
    ``waitid`` on this process's children) and their ``<rank>.done`` files; once a rank is dead or every rank has
    finished and the launcher has not returned within ``grace``, it signals the launching thread with SIGTERM,
    which the agent's own handler turns into ``SignalException``: the agent stops its ranks and ``launch``
    returns rank 0's result (every rank finished) or raises ``RanksLost`` (the job resumes from its checkpoint).

    The agent installs that handler only in the main thread (``python -m training run``, a worker's pool child
    and pytest all launch there); launched from another thread, the watchdog SIGKILLs the ranks and logs, and
    the launcher may stay stuck."""

    def __init__(self, ranks: Path, devices: int, grace: float, poll: float = 0.5) -> None:
        super().__init__(name="launcher-watchdog", daemon=True)
        self.ranks, self.devices, self.grace, self.poll = ranks, devices, grace, poll
        self.launcher = threading.get_ident()
        self.fired: str | None = None  # why it stopped the launcher
        self._lock = threading.Lock()
        self._done = threading.Event()

    def run(self) -> None:
        since: float | None = None
        while not self._done.wait(self.poll):
            reason = self._trouble()
            if reason is None or self.fired is not None:
                since = None if reason is None else since
                continue
            since = since if since is not None else time.monotonic()
            if time.monotonic() - since >= self.grace:
                self._fire(f"{reason}, and the launcher had not returned {self.grace:.0f} s later")

    def _pids(self) -> dict[int, int]:
        pids = {}
        for rank in range(self.devices):
            with contextlib.suppress(OSError, ValueError):
                pids[rank] = int((self.ranks / f"{rank}.pid").read_text())
        return pids

    def all_finished(self) -> bool:
        return all(_done_file(self.ranks.parent, rank).exists() for rank in range(self.devices))

    def _trouble(self) -> str | None:
        dead = [rank for rank, pid in self._pids().items() if _exited(pid)]
        if dead:
            return f"rank {dead[0]} ended" + (" after the run finished" if self.all_finished() else "")
        if self.all_finished():
            return "every rank finished"
        return None

    def _fire(self, reason: str) -> None:
        with self._lock:
            if self._done.is_set():
                return  # the launcher returned meanwhile
            self.fired = reason
            log.error("the launcher of the ranks is stuck (%s): stopping it", reason)
            handled = signal.getsignal(signal.SIGTERM) is _terminate_process_handler
            if self.launcher == threading.main_thread().ident and handled:
                signal.pthread_kill(self.launcher, signal.SIGTERM)
                return
        log.error("the launcher runs outside the main thread and cannot be interrupted: killing its ranks")
        for pid in self._pids().values():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def finish(self) -> None:
        with self._lock:
            self._done.set()


def _rank_error(out_dir: Path, failure: Any) -> Exception:
    reported = sorted((out_dir / "ranks").glob("error-*.json"))
    if reported:
        record = json.loads(reported[0].read_text())
        return TrainingError(record["message"], code=record["code"])
    lines = []
    for rank, info in sorted(failure.failures.items()):
        how = f"signal {info.signal_name()}" if info.exitcode < 0 else f"exit code {info.exitcode}"
        lines.append(f"rank {rank} ended with {how}")
    return RanksLost("; ".join(lines) or "a rank ended unexpectedly")


class _Relay(threading.Thread):
    """The caller's side of ``RelayCallbacks``: events to ``callbacks``, checkpoint acks, the stop answer."""

    def __init__(self, events: Any, acks: Any, stop_code: Any, callbacks: Callbacks, poll_seconds: float) -> None:
        super().__init__(name="rank-relay", daemon=True)
        self.events, self.acks, self.stop_code = events, acks, stop_code
        self.callbacks = callbacks
        self.poll_seconds = poll_seconds
        self.done = threading.Event()
        self.result: Any = None  # rank 0's FitResult, relayed as it returns

    def run(self) -> None:
        while not self.done.is_set():
            self._answer_stop()
            try:
                name, payload = self.events.get(timeout=self.poll_seconds)
            except queue.Empty:
                continue
            self._deliver(name, payload)
        self._drain()

    def _answer_stop(self) -> None:
        self.stop_code.value = _STOP_CODES[self.callbacks.should_stop()]

    def _deliver(self, name: str, payload: Any) -> None:
        if name == "result":
            self.result = payload
            return
        try:
            getattr(self.callbacks, name)(payload)
        finally:
            if name == "on_checkpoint":
                self.acks.put(True)

    def _drain(self) -> None:
        while True:
            try:
                name, payload = self.events.get(timeout=self.poll_seconds)
            except queue.Empty:
                return
            self._deliver(name, payload)

    def finish(self) -> None:
        self.done.set()
        if self.is_alive():
            self.join()
