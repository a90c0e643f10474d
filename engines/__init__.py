"""medmlo engines: a declarative multilevel-optimisation DSL on Betty.

Knows nothing of medicine: levels, graphs, hypergradient methods and runs.
"""

from . import _betty  # noqa: F401  (refuses a wrong betty-ml version with the install command)
from .data import DataStream, IterableSource, mix_seed
from .doctor import AuditSettings, DoctorReport, diagnose
from .errors import CheckpointError, GraphError, LossError, NonFiniteError, ResumeError
from .graph import Graph
from .hypergrad import METHODS, MethodInfo, conjugate_gradient, method_table, minres, register_method
from .level import Level
from .memory import MemoryReport, track_peak_memory
from .run import EarlyStopping, Runner, RunResult, resolve_device, run, seed_everything

__all__ = [
    "METHODS",
    "AuditSettings",
    "CheckpointError",
    "DataStream",
    "DoctorReport",
    "EarlyStopping",
    "Graph",
    "GraphError",
    "IterableSource",
    "Level",
    "LossError",
    "MemoryReport",
    "MethodInfo",
    "NonFiniteError",
    "ResumeError",
    "RunResult",
    "Runner",
    "conjugate_gradient",
    "diagnose",
    "method_table",
    "minres",
    "mix_seed",
    "register_method",
    "resolve_device",
    "run",
    "seed_everything",
    "track_peak_memory",
]
