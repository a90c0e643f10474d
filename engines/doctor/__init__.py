"""The hypergradient doctor: does each method carry the true signal on *this* graph, and which to use.

* :func:`diagnose` — on the graph's next outer step (or a checkpoint's), a reference hypergradient
  (``exact`` through the window the lower levels really took), its trust (finite differences through
  re-runs of the real steps), and every applicable method's cosine, norm ratio, time and memory
  against it, with a recommendation; the graph is left exactly as it was.
* :class:`AuditSettings` and ``Runner(audit_every=N)`` — during a run, every N upper steps, the
  active method against the reference, logged and warned about, without changing the run.

See docs/doctor.md for how to read the table.
"""

from .audit import Auditor, AuditSettings
from .diagnose import diagnose
from .report import Comparison, DoctorReport, MethodRow, ReferenceInfo, UpperReport
from .window import DoctorError

__all__ = [
    "AuditSettings",
    "Auditor",
    "Comparison",
    "DoctorError",
    "DoctorReport",
    "MethodRow",
    "ReferenceInfo",
    "UpperReport",
    "diagnose",
]
