"""Build hook for the two native modules (metadata is in setup.cfg).

``ml._treewalk`` walks trees for :mod:`ml.fastpath`; ``ml._csvbytes`` does the CSV
byte work of :mod:`ml.score`. Both are optional: without a C compiler the install still
succeeds and numpy does their work instead (same results, slower).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension(f"ml.{name}", [f"ml/{name}.c"], optional=True,
                             extra_compile_args=["-O3"])
                   for name in ("_treewalk", "_csvbytes")])
