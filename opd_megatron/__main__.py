"""``python -m opd_megatron`` is the ``opd`` command."""
import sys

from opd_megatron.cli import main

sys.exit(main())
