"""One image on several GPUs. `python -m qco parallel=ulysses parallel.degree=N` checks and plans the run in its
own process, builds the model once, then starts N worker processes through torch's elastic launcher (the API
behind torch.distributed.run), one per GPU. Each worker joins the process group (NCCL on GPUs, gloo on a CPU),
takes the GPU of its local rank, and runs the same run (qco/runner.py) with the same seed; the composer then
splits the denoiser's work with diffusers' context parallelism (enable_parallelism). Rank 0 writes the run's
record, images and rerun.yaml into the run folder; every other rank writes its own record under ranks/rankN/.

A rank that fails stops the others (the elastic agent terminates every worker of the group, then kills what is
left), and the run is recorded as failed with that rank's reason: the exception it raised (the worker's @record
writes it where the agent reads it), or the signal that killed it. The launcher's run id is in every worker's
environment (TORCHELASTIC_RUN_ID) and in the record's reason on failure, so a stray process could be found.
Ctrl-C or a SIGTERM to the launching process: the agent stops every rank, and the run is recorded as interrupted,
as a run of one process is, so that running a sweep again runs it again."""

import logging
import os
import signal
import uuid
from pathlib import Path
from typing import Callable, List

from omegaconf import OmegaConf
from torch.distributed.elastic.multiprocessing.errors import record

from qco.errors import QcoError
from qco.record import RESULTS, Record, read_record

log = logging.getLogger(__name__)

RANKS = "ranks"  # ranks/rankN/: the record of each rank other than 0


class RankFailed(QcoError):
    """A worker of a parallel run failed: the run failed (not a refusal), with that rank's reason."""

    status = "failed"
    exit_code = 1


class Stopped(QcoError):
    """The launching process was asked to end (SIGTERM: a kill, a scheduler's time limit): the agent stopped every
    rank. Recorded as interrupted, as a Ctrl-C is, so that running the sweep again runs it again."""

    status = "interrupted"

    def __init__(self, lines, signal_number: int):
        super().__init__(lines)
        self.exit_code = 128 + signal_number  # as a shell reports a process ended by that signal


def is_worker() -> bool:
    """Whether this process is a rank started by the launcher (it then runs, never launches)."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ


def run_parallel(cfg, run_dir: Path, overrides: List[str], world_size: int, run: Callable) -> Record:
    """Start world_size workers of this run and wait for them; rank 0's record, or RankFailed. `run`: what each
    worker runs (qco/runner.py run, passed in so that this module never imports the runner that calls it)."""
    import torch
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # this process planned (and may have built the model) on GPU 0, rank 0's GPU
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    run_id = f"qco-{uuid.uuid4().hex[:12]}"
    logs = run_dir / RANKS / "logs"
    launch = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=world_size, run_id=run_id,
        rdzv_backend="c10d", rdzv_endpoint="localhost:0",  # one host, a free port: torchrun --standalone's way
        max_restarts=0,  # a failed rank fails the run: measured figures never come from a restarted group
        monitor_interval=0.5, start_method="spawn",
        logs_specs=DefaultLogsSpecs(log_dir=str(logs), redirects=Std.ALL, tee=Std.ALL if _tee() else Std.NONE),
    )
    log.info("Starting %d processes (run id %s), one per GPU; their output: %s", world_size, run_id, logs)
    try:
        elastic_launch(launch, worker)(config, str(run_dir), list(overrides), run)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        raise RankFailed(f"rank {rank} of {world_size} failed: {_why(failure)}; every other rank was stopped "
                         f"(run id {run_id}); each rank's output: {logs}") from None
    except SignalException as stopped:  # the agent turns SIGINT and SIGTERM into this, once it stopped the ranks
        if stopped.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None  # Ctrl-C, as in a run of one process
        raise Stopped(f"stopped by {stopped.sigval.name} before it finished, with every rank (run id {run_id}); "
                      f"each rank's output: {logs}; fix: run the same command again", stopped.sigval) from None
    return read_record(run_dir / RESULTS)


def _tee() -> bool:
    return logging.getLogger().isEnabledFor(logging.INFO)  # each rank's lines in the console too, as torchrun's


def _why(failure) -> str:
    """What ended a rank: its exception (from the error file @record wrote), or the signal or exit code."""
    if isinstance(failure.message, dict):  # {"message": "Type: text", "extraInfo": {"py_callstack": ...}}
        text = str(failure.message.get("message", "")).strip()
        if text:
            return text.splitlines()[0]
    if failure.exitcode is not None and failure.exitcode < 0:
        return f"killed by {failure.signal_name()} (out of host memory, or a kill)"
    return f"exit code {failure.exitcode}"


def _interrupt_once(signum, frame):
    """Ctrl-C reaches a rank twice: from the terminal, then from the agent stopping the group. The second would
    stop the rank while it records the first (its record would stay "running"), so it is ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


@record  # the elastic agent reads a failed rank's exception from the error file this writes
def worker(config: dict, run_dir: str, overrides: List[str], run: Callable) -> None:
    import torch
    import torch.distributed as dist

    from qco.config import typed

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    signal.signal(signal.SIGINT, _interrupt_once)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    cfg = typed(config)
    on_gpu = cfg.run.device != "cpu" and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(local_rank)  # run.device=cuda resolves to this rank's GPU (qco/target.py)
    dist.init_process_group("nccl" if on_gpu else "gloo")
    try:
        if rank != 0:
            cfg.run.quality = False  # rank 0's image is the run's; the other ranks make the same one
        run(cfg, Path(run_dir) if rank == 0 else Path(run_dir) / RANKS / f"rank{rank}", overrides)
    finally:
        dist.destroy_process_group()
