"""The rows of DuMeta++'s tables: how each method's network is obtained, and the meta-tests it gets.

A method is one of:

* ``scratch`` — no pre-training: a randomly initialised network trained on the support subjects
  (RandInitUnet.2D / .3D of Tables I–IV);
* ``dual`` — a DuMeta++ configuration (``variant``, a key of :data:`~problems.dumeta.levels.VARIANTS`):
  DuMeta++ itself and its Table V ablations;
* ``init`` — MAML or Reptile: a meta-learned initialisation of the whole network;
* ``joint`` — Table V A: the network trained on the pooled datasets, no meta-learning;
* ``reference`` — no network: Table IV's yardsticks on the same test series, the labels themselves
  (``truth``: the atrophy built into the data) and a trivial labelling (``all-gm``: every brain voxel
  grey matter), which is perfectly "consistent" over time while segmenting nothing.

A *meta-test* (:class:`Job`) fine-tunes a start on ``shots`` support subjects of one unseen domain
with the last ``depth`` decoder stages trainable (``"all"``: the whole network, 0: none) and scores
the test subjects. Each method is meta-tested the way its own paper does (:func:`protocols`, first
entry): DuMeta++ and its ablations with the encoder frozen and the head fine-tuned (Sec. IV-B),
MAML and Reptile — which meta-learn an initialisation of every parameter and adapt them all — and
random initialisation on the whole network. MAML, Reptile and Table V A are also meta-tested the
other way (both rows are reported, labelled). :func:`jobs_for` lists the meta-tests of one run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_CAPACITY",
    "METHODS",
    "REFERENCES",
    "TABLE_V",
    "Job",
    "Method",
    "jobs_for",
    "protocols",
    "row_label",
]

DEFAULT_CAPACITY = 100
"""N of the memory bank (Sec. IV-C4: "a capacity of 100 offers a strong accuracy-efficiency trade-off")."""


@dataclass(frozen=True)
class Method:
    """A row of Tables I–V.

    Attributes:
        label: the row's name in the report.
        kind: ``scratch``, ``dual``, ``init``, ``joint`` or ``reference`` (module docstring).
        variant: the DuMeta++ configuration (``dual``) or ``"maml"`` / ``"reptile"`` (``init``).
        dims: the network's dimensionality when it is fixed (``scratch``), else the preset's.
        main: a row of Tables I–IV (else an ablation of Table V only).
        table_v: its code in Table V (``"A"`` … ``"F"``), if it is a row there.
        paper: its row's name in the paper's Tables I–IV, when the paper reports the same method.
    """

    label: str
    kind: str
    variant: str | None = None
    dims: int | None = None
    main: bool = False
    table_v: str | None = None
    paper: str | None = None


METHODS: dict[str, Method] = {
    "randinit-2d": Method("RandInitUnet.2D", "scratch", dims=2, main=True, paper="RandInitUnet.2D"),
    "randinit-3d": Method("RandInitUnet.3D", "scratch", dims=3, main=True, paper="RandInitUnet.3D"),
    "maml": Method("MAML", "init", "maml", main=True, paper="MAML"),
    "reptile": Method("Reptile", "init", "reptile", main=True, paper="Reptile"),
    "sample": Method("Sample-level anchors (V E)", "dual", "sample", main=True, table_v="E"),
    "dumeta++": Method("DuMeta++", "dual", "dumeta++", main=True, table_v="F", paper="DuMeta++"),
    "joint": Method("Joint training", "joint", table_v="A"),
    "mfl": Method("MFL only", "dual", "mfl", table_v="B"),
    "mfl+mil": Method("MFL + MIL", "dual", "mfl+mil", table_v="C"),
    "prototype-sum": Method("Prototype, sum", "dual", "prototype-sum", table_v="D"),
    "mil": Method("MIL only", "dual", "mil", table_v="MIL only"),
    "truth": Method("Ground truth (the labels)", "reference"),
    "all-gm": Method("Trivial: every brain voxel GM", "reference"),
}

REFERENCES = tuple(name for name, m in METHODS.items() if m.kind == "reference")
"""Table IV's yardsticks, added to every plan with a method of Tables I–IV."""

TABLE_V = dict(sorted((m.table_v, name) for name, m in METHODS.items() if m.table_v))
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
    """The fine-tuned depths of ``method``'s meta-tests, its own paper's first (module docstring):
    ``"all"`` (the whole network) or ``head_depth`` (encoder frozen, the last decoder stages); 0 for a
    reference (nothing is trained)."""
    kind = METHODS[method].kind
    return {
        "scratch": ["all"],
        "dual": [head_depth],
        "init": ["all", head_depth],
        "joint": [head_depth, "all"],
        "reference": [0],
    }[kind]


def row_label(method: str, depth: int | str, head_depth: int | str) -> str:
    """The method's row name, with the protocol when it is meta-tested in more than one way."""
    label = METHODS[method].label
    if len(protocols(method, head_depth)) == 1:
        return label
    return f"{label}, whole network" if str(depth) == "all" else f"{label}, encoder frozen ({depth} stages)"


def jobs_for(
    method: str,
    *,
    capacity: int,
    head_depth: int | str,
    shots: Sequence[int],
    depths: Sequence[int | str],
    both_protocols: bool = True,
) -> list[Job]:
    """The meta-tests one run of ``method`` (memory-bank ``capacity``) feeds into the tables.

    Tables I–III (main methods): ``shots`` on both unseen domains (the paper: one shot on the first,
    one and five on the second); Table IV (and its references): one shot on the second; Table V:
    one shot on the first; Table VI (DuMeta++ at another capacity): one shot on the second only;
    Fig. 7 (DuMeta++): one shot on the first at every depth of ``depths``. Every protocol of the
    method (:func:`protocols`) gets each of its meta-tests (only its own paper's without ``both_protocols``).
    """
    spec = METHODS[method]
    jobs: list[Job] = []
    if spec.kind == "reference":
        return [Job(1, 1, 0)]
    if method == "dumeta++" and capacity != DEFAULT_CAPACITY:
        return [Job(1, 1, head_depth)]
    for depth in protocols(method, head_depth)[: None if both_protocols else 1]:
        if spec.main:
            jobs += [Job(d, k, depth) for d in (0, 1) for k in shots]
        if spec.table_v:
            jobs.append(Job(0, 1, depth))
    if method == "dumeta++":
        jobs += [Job(0, 1, d) for d in depths]
    return list(dict.fromkeys(jobs))
