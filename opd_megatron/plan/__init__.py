"""A run on paper: the FLOPs account (``flops``), which node runs what (``placement``) and the
plan ``opd validate`` prints (``describe``). Pure Python: nothing here starts a process."""
