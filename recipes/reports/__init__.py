"""The paper-shaped report of each recipe: results.md (the paper's claims tested first, then the
paper's tables with its numbers beside ours), results.json and figures, built on recipes/reporting.py."""
