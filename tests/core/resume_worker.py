"""Run by tests/core/test_resume.py as a separate process that the test kills with SIGKILL.

    python resume_worker.py OUT METHOD STEPS

Runs the toy reweighting graph, resuming from OUT when ``checkpoint_latest.pt`` is there (as users
write launchers), printing the global step after every step (so the test knows when to kill), and
saving the final parameters. With ``MEDMLO_TEST_KILL_BEFORE_RENAME_ONTO=NAME:N`` in the environment it
SIGKILLs itself right before the N-th rename onto the file NAME in OUT (see crash_hooks.py).
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core_toys import parameters, reweighting_graph
from crash_hooks import kill_before

from engines import Runner


def main() -> None:
    out, method, steps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    graph = reweighting_graph(method)
    kill = os.environ.get("MEDMLO_TEST_KILL_BEFORE_RENAME_ONTO")
    if kill:
        name, nth = kill.rsplit(":", 1)
        renames = []

        def onto_name(_index: int, what: str) -> bool:
            if not (what.startswith("os.rename") and what.endswith(f"-> {name}")):
                return False
            renames.append(what)
            return len(renames) == int(nth)

        kill_before(out, onto_name)
    resume = (out / "checkpoint_latest.pt").exists()
    runner = Runner(
        graph,
        steps,
        out=out,
        device="cpu",
        progress=False,
        checkpoint_every=3,
        resume=resume,
        validate=lambda g: {"score": float(g["gates"].module.weight.sum())},
        valid_every=4,
    )
    runner.start()
    while runner.step_count < steps:
        runner.step()
        print(runner.step_count, flush=True)
    runner.run()  # final validation and checkpoint
    torch.save(parameters(graph), out / "final_parameters.pt")


if __name__ == "__main__":
    main()
