"""The paper-shaped report of each recipe: results.md (the claims table first), results.json and figures.

One module per recipe, built on ``recipes/reporting.py``; nothing here trains anything.
"""
