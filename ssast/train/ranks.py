"""A run on several processes never waits forever on one that stopped, and says which it lost.

Lightning's DDP and FSDP strategies wait on a collective for their process group's timeout,
half an hour by default: a rank that stops (a hung file system, a node paused by its
scheduler, a debugger) holds the others for that long, and the errors that end them (gloo's
``Connection closed by peer``, NCCL's) name an address, not a rank. The training programs
build those strategies with ``collective_timeout_minutes``
(:func:`with_collective_timeout`); :class:`RankTable` notes where each rank runs, and when a
collective fails, :func:`lost_rank_message` gives the line every surviving rank exits with:
the rank it lost, stopped or gone, and the command to go on.

On GPUs, NCCL's watchdog ends a process whose collective timed out itself (by default it
does not raise into Python): the run still ends within the timeout, with NCCL's report.
"""

from __future__ import annotations

import datetime
import inspect
import os
import re
import socket
from pathlib import Path
from typing import Any

import lightning as L
import torch.distributed as dist
from lightning.pytorch.strategies import StrategyRegistry

# The longest a rank may wait for the others at a collective. One rank alone writes a
# checkpoint while the others wait at the next collective: the largest we write, EAT-Large's
# while pretraining (student, teacher, decoder and AdamW's two moments: about 4.8 GB), takes
# about a minute at 100 MB/s and four at 20 MB/s, a slow shared file system; the probes of
# ProbeMonitor (rank 0 alone) take seconds for the recipes' tasks. Ten minutes covers both
# with room, and a stopped rank costs the allocation ten minutes, not thirty.
DEFAULT_COLLECTIVE_TIMEOUT_MINUTES = 10.0

# (hostname, pid) of each rank, by global rank: what RankTable gathered in this process.
_ranks: list[tuple[str, int]] = []


def with_collective_timeout(strategy: Any, minutes: float) -> Any:
    """``strategy`` as the trainer's config names it, built with a ``minutes`` timeout when it
    is a registered name of a strategy that takes one (``ddp``, ``ddp_spawn``,
    ``ddp_find_unused_parameters_true``, ``fsdp`` ...); anything else as it is (an object the
    recipe built, ``auto`` on one device)."""
    if minutes <= 0:
        raise ValueError(f"collective_timeout_minutes must be positive, got {minutes}")
    if not isinstance(strategy, str) or strategy not in StrategyRegistry:
        return strategy
    entry = StrategyRegistry[strategy]
    if "timeout" not in inspect.signature(entry["strategy"].__init__).parameters:
        return strategy
    return entry["strategy"](**entry["init_params"], timeout=datetime.timedelta(minutes=minutes))


class RankTable(L.Callback):
    """Gathers each rank's host and process id when a run on several processes starts, for
    :func:`lost_rank_message` to name the rank a failed collective lost."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        global _ranks
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        table: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(table, (socket.gethostname(), os.getpid()))
        _ranks = [tuple(entry) for entry in table]


_COLLECTIVE_FAILURE = re.compile(r"gloo|NCCL|Connection (closed|reset) by peer|Timed out waiting|Broken pipe")


def lost_rank_message(error: BaseException) -> str | None:
    """The line for ``error`` when it, or what caused it, is a collective that failed (a
    timeout, a peer gone); ``None`` for any other error."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, dist.DistError) or (isinstance(cause, RuntimeError) and
                                                 _COLLECTIVE_FAILURE.search(str(cause))):
            break
        cause = cause.__cause__ or cause.__context__
    else:
        return None
    me = dist.get_rank() if dist.is_available() and dist.is_initialized() else None
    lost = [f"rank {rank} (pid {pid}) {state}" for rank, (host, pid) in enumerate(_ranks)
            if rank != me and (state := _state(host, pid)) is not None]
    who = ", ".join(lost) if lost else "another rank"
    reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    reason = re.sub(r"^\[[^\]]*\] ", "", reason)  # gloo's source location
    return (f"rank {me if me is not None else '?'} lost {who}: a collective failed ({reason}). The run stops on "
            "every rank; once the lost rank's trouble is over, run the same command with --ckpt_path last to go on "
            "from the last checkpoint")


def _state(host: str, pid: int) -> str | None:
    """How a rank on this host is: ``has exited``, ``is stopped``; ``None`` while it runs. A
    rank on another host: ``on <host>``, its state unknown from here."""
    if host != socket.gethostname():
        return f"on {host}"
    status = Path(f"/proc/{pid}/status")
    try:
        state = next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("State:"))
    except (OSError, StopIteration):
        return "has exited"
    if state in ("Z", "X"):
        return "has exited"
    if state in ("T", "t"):
        return "is stopped"
    return None
