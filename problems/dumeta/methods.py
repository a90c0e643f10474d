"""The rows of DuMeta++'s tables: how each method's network is obtained, and the meta-tests it gets.

A method is one of:

* ``scratch`` — no pre-training: a randomly initialised network trained on the support subjects
  (RandInitUnet.2D / .3D of Tables I–IV);
* ``dual`` — a DuMeta++ configuration (``variant``, a key of :data:`~problems.dumeta.levels.VARIANTS`):
  DuMeta++ itself and its Table V ablations;
* ``init`` — MAML or Reptile: a meta-learned initialisation of the whole network;
* ``joint`` — Table V A: the network trained on the pooled datasets, no meta-learning.

A *meta-test* (:class:`Job`) fine-tunes a start on ``shots`` support subjects of one unseen domain
with the last ``depth`` decoder stages trainable (``"all"``: the whole network, 0: none) and scores
the test subjects. :func:`jobs_for` lists the meta-tests each table needs from one run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_CAPACITY", "METHODS", "TABLE_V", "Job", "Method", "jobs_for", "protocols"]

DEFAULT_CAPACITY = 100
"""N of the memory bank (Sec. IV-C4: "a capacity of 100 offers a strong accuracy-efficiency trade-off")."""


@dataclass(frozen=True)
class Method:
    """A row of Tables I–V.

    Attributes:
        label: the row's name in the report.
        kind: ``scratch``, ``dual``, ``init`` or ``joint`` (module docstring).
        variant: the DuMeta++ configuration (``dual``) or ``"maml"`` / ``"reptile"`` (``init``).
        dims: the network's dimensionality when it is fixed (``scratch``), else the preset's.
        main: a row of Tables I–IV (else an ablation of Table V only).
        table_v: its code in Table V (``"A"`` … ``"F"``), if it is a row there.
    """

    label: str
    kind: str
    variant: str | None = None
    dims: int | None = None
    main: bool = False
    table_v: str | None = None


METHODS: dict[str, Method] = {
    "randinit-2d": Method("RandInitUnet.2D", "scratch", dims=2, main=True),
    "randinit-3d": Method("RandInitUnet.3D", "scratch", dims=3, main=True),
    "maml": Method("MAML", "init", "maml", main=True),
    "reptile": Method("Reptile", "init", "reptile", main=True),
    "sample": Method("Sample-level anchors (V E)", "dual", "sample", main=True, table_v="E"),
    "dumeta++": Method("DuMeta++", "dual", "dumeta++", main=True, table_v="F"),
    "joint": Method("A", "joint", table_v="A"),
    "mfl": Method("B", "dual", "mfl", table_v="B"),
    "mfl+mil": Method("C", "dual", "mfl+mil", table_v="C"),
    "prototype-sum": Method("D", "dual", "prototype-sum", table_v="D"),
    "mil": Method("MIL only", "dual", "mil", table_v="MIL only"),
}

TABLE_V = {m.table_v: name for name, m in METHODS.items() if m.table_v}
"""Table V's rows in the paper's order: code -> method."""


@dataclass(frozen=True)
class Job:
    """One meta-test of a run: an unseen domain (index into the targets), shots and fine-tuned depth."""

    domain: int
    shots: int
    depth: int | str

    def folder(self, domain: str) -> str:
        """The job's folder name under its run's ``finetune/``, e.g. ``elderly__5shot__depth3``."""
        return f"{domain}__{self.shots}shot__depth{self.depth}"


def protocols(method: str, head_depth: int | str) -> list[int | str]:
    """The fine-tuned depths of ``method``'s meta-tests: the whole network for random initialisation,
    the paper's head (encoder frozen, ``head_depth`` decoder stages) for every pre-trained start."""
    return ["all"] if METHODS[method].kind == "scratch" else [head_depth]


def jobs_for(
    method: str,
    *,
    capacity: int,
    head_depth: int | str,
    shots: Sequence[int],
    depths: Sequence[int | str],
) -> list[Job]:
    """The meta-tests one run of ``method`` (memory-bank ``capacity``) feeds into the tables.

    Tables I–III (main methods): one shot on the first unseen domain, ``shots`` on the second;
    Table V: one shot on the first; Table VI (DuMeta++ at another capacity): one shot on the second
    only; Fig. 7 (DuMeta++): one shot on the first at every depth of ``depths``.
    """
    spec = METHODS[method]
    jobs: list[Job] = []
    if method == "dumeta++" and capacity != DEFAULT_CAPACITY:
        return [Job(1, 1, head_depth)]
    for depth in protocols(method, head_depth):
        if spec.main:
            jobs += [Job(0, 1, depth), *(Job(1, k, depth) for k in shots)]
        if spec.table_v:
            jobs.append(Job(0, 1, depth))
    if method == "dumeta++":
        jobs += [Job(0, 1, d) for d in depths]
    return list(dict.fromkeys(jobs))
