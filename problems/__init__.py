"""Declarative levels and what they are built from (networks, datasets, metrics, augmentation).

Modules: ``e2eaug`` / ``pix2pix`` / ``augment`` / ``metrics`` / ``segdata`` (E2EAug) and
``rmmetal`` / ``fewshot`` (RM-MetaL and its baselines). Nothing here parses command lines.
"""
