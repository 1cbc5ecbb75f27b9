"""Datasets, splits, transforms and loaders: a :class:`recipec.data.config.DataConfig` in, loaders out.

- :mod:`.config`: :class:`DataConfig` (what to read, how to split, how images become tensors, how
  they are loaded); made from a recipe by :mod:`recipec.compiler.data_config`.
- :mod:`.build`: :func:`build_data`, a run's loaders; :mod:`.heldout`: :func:`build_split`, one split
  for evaluation; :mod:`.loaders`: :class:`Data`, :func:`set_epoch`.
- the readers (:mod:`.datasets`, :mod:`.folders`, :mod:`.manifest`, :mod:`.images`), the split
  (:mod:`.splits`), the transforms (:mod:`.transforms`, :mod:`.crops`, :mod:`.augment`) and the
  sampler (:mod:`.sampler`).

Nothing is imported here: :mod:`.crops` and :mod:`.config` stay torch-free for the card.
"""
