"""E2EAug: three levels solved end to end — a mask-to-image GAN with a searchable generator, the
segmenter trained on its images, and the generator architecture scored on validation data.

Paper: *E2EAug: An End-to-End Data Augmentation Framework for Medical Image Semantic Segmentation*
(anonymous submission); the method's public code is GenSeg (L. Zhang et al., "Generative AI enables
medical image segmentation in ultra low-data regimes", Nature Communications, 2025).

* :mod:`~problems.e2eaug.levels` — the levels ``gan`` (Eq. 1), ``seg`` (Eq. 2), ``arch`` (Eq. 3) and
  the graph of Eq. 4;
* :mod:`~problems.e2eaug.pix2pix` — the searchable Pix2Pix U-Net generator and the PatchGAN
  discriminator;
* :mod:`~problems.e2eaug.augment` — rotate / flip / translate of masks and of image-mask pairs;
* :mod:`~problems.e2eaug.data` — the Table 1 splits of one (N, seed) setting and the test sets;
* :mod:`~problems.e2eaug.methods` — the methods compared (Tables 2/3, §4.3) and each one's graph;
* :mod:`~problems.e2eaug.pretraining` — Pix2Pix trained alone before the end-to-end phase;
* :mod:`~problems.e2eaug.evaluation` — validation, per-image test scores, examples for figures.
"""

from . import levels
from .levels import *  # noqa: F403

__all__ = list(levels.__all__)
