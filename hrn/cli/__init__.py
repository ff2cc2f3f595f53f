"""The command layer shared by the commands (``python -m hrn.<verb>``): the Hydra configs (:mod:`~hrn.cli.config`),
building the library's objects from them (:mod:`~hrn.cli.build`), a training or an evaluation run from a config
(:mod:`~hrn.cli.training`, :mod:`~hrn.cli.evaluation`), the end-to-end benchmark (:mod:`~hrn.cli.e2e`) and the
one-line errors (:mod:`~hrn.cli.errors`). With the command modules, the only part of the package that imports
Hydra; the library never imports it."""
