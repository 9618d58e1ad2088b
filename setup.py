"""Build of the C core and its Cython bridge; all metadata is in pyproject.toml.

FASTCKPT_SANITIZE=1 builds with AddressSanitizer and UndefinedBehaviorSanitizer
(used by .ci/sanitize); FASTCKPT_WERROR=1 turns warnings into errors.
"""

import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

C_SOURCES = sorted(glob.glob("csrc/*.c"))
HEADERS = sorted(glob.glob("csrc/*.h"))
BRIDGE = ["fastckpt/_core.pxd"] + sorted(glob.glob("fastckpt/*.pxi"))  # included by _core.pyx

compile_args = ["-O3", "-std=c11", "-Wall", "-Wextra", "-fvisibility=hidden", "-pthread"]
link_args = ["-pthread"]
if os.environ.get("FASTCKPT_WERROR"):
    compile_args.append("-Werror")
if os.environ.get("FASTCKPT_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    compile_args = [a for a in compile_args if a != "-O3"] + ["-O1", "-g"] + san
    link_args += san

core = Extension(
    "fastckpt._core",
    sources=["fastckpt/_core.pyx"] + C_SOURCES,
    include_dirs=["csrc", numpy.get_include()],
    depends=HEADERS + BRIDGE,
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    libraries=["dl"],  # libzstd is loaded at run time (csrc/zframe.c): no zstd headers needed to build
    define_macros=[("_FILE_OFFSET_BITS", "64"), ("_GNU_SOURCE", "1"),
                   ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(ext_modules=cythonize([core], compiler_directives={"language_level": "3"}))
