"""Run with the image's Python at the end of the CUDA image's build: gsplat's kernels, compiled in the build,
must import (a node must not compile them)."""

from gsplat.cuda._backend import _C

assert _C is not None, "gsplat's CUDA kernels were not compiled into the image"
print("gsplat's CUDA kernels are in the image")
