"""Build hook for the two native modules (metadata is in setup.cfg).

``ml.serving._treewalk`` walks trees for :mod:`ml.serving.trees`;
``ml.batch._csvbytes`` does the CSV byte work of :mod:`ml.batch.score`. Both are
optional: without a C compiler the install still succeeds and numpy does their work
instead (same results, slower).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension(f"ml.{package}.{name}", [f"ml/{package}/{name}.c"], optional=True,
                             extra_compile_args=["-O3"])
                   for package, name in (("serving", "_treewalk"), ("batch", "_csvbytes"))])
