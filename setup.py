"""Build hook for the native tree walk (metadata is in setup.cfg).

``ml.serving._treewalk`` walks trees for :mod:`ml.serving.trees`. It is optional:
without a C compiler the install still succeeds and numpy walks the trees instead (same
results, slower).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("ml.serving._treewalk", ["ml/serving/_treewalk.c"], optional=True,
                             extra_compile_args=["-O3"])])
