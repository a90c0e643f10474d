"""The paper-shaped report of each recipe: results.md (claims first, then the paper's tables), results.json
and figures, built on recipes/reporting.py."""
