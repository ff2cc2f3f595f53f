"""What the commands (``python -m hrn.<verb>``, one file each: ``hrn/<verb>.py``) share: the Hydra configs and the
settings an experiment applies at one relabel ratio (:mod:`~hrn.cli.config`), the library's objects built from a
composed config (:mod:`~hrn.cli.build`), the command line checked before Hydra runs (:mod:`~hrn.cli.entry`) and the
one-line errors (:mod:`~hrn.cli.errors`). With the command modules, the only part of the package that imports
Hydra; the library never imports it."""
