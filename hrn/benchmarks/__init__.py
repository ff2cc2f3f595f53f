"""Speed benchmarks (``python -m hrn.bench``): the tree loss against the authors' formulation
(:mod:`~hrn.benchmarks.tree_loss`), HRN's train step against a plain ResNet-50 (:mod:`~hrn.benchmarks.train_step`),
the data pipeline (:mod:`~hrn.benchmarks.data`), as JSON and tables (:mod:`~hrn.benchmarks.tables`); figures always
name the machine (:mod:`~hrn.benchmarks.timing`)."""
