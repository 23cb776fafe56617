"""One run, from a validated config to its run directory: ``runner`` (``opd run``), ``session``
(the live objects), ``loop`` (the run told top to bottom), ``rundir``, ``prepare``, ``continual``."""
