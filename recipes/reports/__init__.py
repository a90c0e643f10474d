"""The paper-shaped report of each recipe: results.md (the paper's claims tested first, then its
tables beside our numbers), results.json and figures, built on :mod:`reporting`."""
