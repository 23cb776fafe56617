"""Ships ``opd_torchvision_cpu_ops.pth`` into site-packages (setuptools has no option for it).

A ``.pth`` line starting with ``import`` runs at interpreter start-up (see Python's ``site``
docs); ours only installs a cheap import hook, it imports nothing heavy.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "opd_torchvision_cpu_ops.pth"


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        self.copy_file(PTH_NAME, os.path.join(self.build_lib, PTH_NAME))


setup(cmdclass={"build_py": BuildPyWithPth})
