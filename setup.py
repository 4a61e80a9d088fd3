"""Build hook for the one native module, ``ml._treewalk`` (metadata is in setup.cfg).

The extension is optional: without a C compiler the install still succeeds and
:mod:`ml.fastpath` walks trees in numpy instead (same results, slower).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("ml._treewalk", ["ml/_treewalk.c"], optional=True,
                             extra_compile_args=["-O3"])])
