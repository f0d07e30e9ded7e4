"""The one data path of training, from any input to batches on the device.

- :mod:`~training.data.readers`, :mod:`~training.data.frames`: files (extxyz/ASE, MPTrj JSON,
  ``.aselmdb``) to validated :class:`~training.data.frames.Frame` objects.
- :mod:`~training.data.store`: the HDF5 store (``mlip-data convert``) writer and reader.
- :mod:`~training.data.statistics`: E0s, shift, scale, mean neighbour count; one formula for
  frames or a store, cached in stores.
- :mod:`~training.data.splits`: one seeded split rule; splits saved in stores.
- :mod:`~training.data.datasets`: :class:`~training.data.datasets.GraphDataset`, the budget
  batch sampler (DDP shares, mid-epoch resume) and :func:`~training.data.datasets.make_loader`
  (neighbour lists built in DataLoader workers).
- :mod:`~training.data.prepare`: ``config.data`` to datasets, statistics and loaders (rank 0
  writes the store's caches, the other ranks wait and read).
"""
