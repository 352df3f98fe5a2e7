"""parallel: one image on several GPUs through diffusers' context parallelism (enable_parallelism), one process
per GPU. Starting and watching those processes is qco/ranks.py; this is the group's schema, plan and split."""

import logging
from dataclasses import dataclass
from typing import List, Optional

from qco.choice import Choice

log = logging.getLogger(__name__)


class ParallelMethod(Choice):
    ulysses = "ulysses"  # each rank attends with a share of the heads over the whole sequence (all-to-all)
    ring = "ring"  # each rank keeps a share of the sequence and passes keys and values round a ring
    ulysses_ring = "ulysses_ring"  # both: parallel.ring_degree ranks in each ring, the rest Ulysses


@dataclass
class ParallelConfig:
    name: str = "none"
    method: Optional[ParallelMethod] = None  # null: one process, one GPU
    degree: int = 1  # GPUs (processes) for the one image
    ring_degree: Optional[int] = None  # ulysses_ring: the ring's share of degree (the rest is Ulysses)


@dataclass
class ParallelStep:
    method: Optional[str] = None  # ulysses | ring | ulysses_ring; None: one process
    ulysses_degree: int = 1
    ring_degree: int = 1

    @property
    def world_size(self) -> int:
        return self.ulysses_degree * self.ring_degree


def parallel_step(parallel: ParallelConfig) -> ParallelStep:
    """parallel.degree split into diffusers' two degrees (check_parallel checked that they divide)."""
    if parallel.method is None:
        return ParallelStep()
    if parallel.method == "ulysses":
        return ParallelStep("ulysses", ulysses_degree=parallel.degree)
    if parallel.method == "ring":
        return ParallelStep("ring", ring_degree=parallel.degree)
    return ParallelStep("ulysses_ring", ulysses_degree=parallel.degree // parallel.ring_degree,
                        ring_degree=parallel.ring_degree)


def split_across_ranks(pipe, parallel: ParallelStep, component: str) -> None:
    """Each rank works on a share of the tokens; attention exchanges them by all-to-all (Ulysses) or passes them
    round a ring."""
    if parallel.world_size <= 1:
        return
    from diffusers import ContextParallelConfig

    log.info("Splitting %s across %d ranks: Ulysses %d x ring %d", component, parallel.world_size,
             parallel.ulysses_degree, parallel.ring_degree)
    getattr(pipe, component).enable_parallelism(
        config=ContextParallelConfig(ulysses_degree=parallel.ulysses_degree, ring_degree=parallel.ring_degree))


def check_parallel(parallel: ParallelConfig, device: str) -> List[str]:
    """The degrees: at least 1, parallel.degree only with a method, and a ring's share that divides it."""
    degree, ring = parallel.degree, parallel.ring_degree
    if degree < 1:
        return [f"parallel.degree={degree}: the GPUs for one image, at least 1; fix: parallel.degree=2"]
    if parallel.method is None:
        return [] if degree == 1 else [f"parallel.degree={degree} with parallel=none: one process runs the image; "
                                       f"fix: parallel=ulysses parallel.degree={degree} (or ring, ulysses_ring)"]
    if parallel.method != "ulysses_ring" and ring is not None:
        return [f"parallel.ring_degree={ring} with parallel={parallel.method}: only ulysses_ring splits the degree; "
                "fix: parallel=ulysses_ring, or drop parallel.ring_degree"]
    if parallel.method == "ulysses_ring" and (ring is None or ring < 2 or degree % ring or degree // ring < 2):
        return [f"parallel.ring_degree={ring} with parallel.degree={degree}: ulysses_ring needs rings of 2 or more "
                "ranks and at least 2 of them (ring_degree divides degree); fix: parallel.degree=4 "
                "parallel.ring_degree=2"]
    if degree > 1 and device.startswith("cuda:"):
        return [f"run.device={device} with parallel.degree={degree}: each rank takes the GPU of its own rank; "
                "fix: run.device=cuda (CUDA_VISIBLE_DEVICES chooses which GPUs)"]
    return []
