"""Datasets as :class:`~hrn.data.base.DataSplits` (a tree and three labelled splits): the synthetic and
Fashion-MNIST ones in memory, CUB, FGVC-Aircraft, Stanford Cars and the user's own folder from image files
(:mod:`~hrn.data.files`, the image cache :mod:`~hrn.data.cache`); the paper's transforms (:mod:`~hrn.data.augment`)
and protocols (:mod:`~hrn.data.protocols`)."""
