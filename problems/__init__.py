"""Declarative levels and what they are built from (networks, datasets, metrics, losses, augmentation).

One module (or package) per concern, grouped by the recipe that first needed it:

* E2EAug: ``e2eaug`` (levels), ``pix2pix`` (searchable and vanilla generators), ``augment``,
  ``metrics``, ``segdata/`` (nine segmentation datasets in their official layouts).
* RM-MetaL: ``rmmetal`` (levels and algorithms), ``fewshot/`` (four few-shot formats + the digits stand-in).
* DuMeta++: ``dumeta`` (levels and variants), ``dumeta_net`` (the encoder/decoder U-Net), ``prototypes``
  (memory bank and class-aware regulariser), ``segloss``, ``dumeta_data``, ``dumeta_metatest``,
  ``braindata/`` (lifespan brain domains, iSeg-2019 and nnU-Net-style layouts, tissue metrics).
* MRI reconstruction: ``mri/`` (the shared k-space substrate: operators, masks, data, metrics),
  ``loa`` and ``metarecon`` (Bian et al.'s LOA network and its levels), ``optimal_control`` and
  ``taskcorr`` (the optimal-control network with its adjoint gradients, and the task-correlation levels).

Nothing here parses command lines.
"""
