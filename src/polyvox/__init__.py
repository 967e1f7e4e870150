"""polyvox: from a voice corpus to a deployed custom voice."""

import os

__version__ = "0.1.0"

# librosa compiles its pitch kernels with numba and caches them (cache=True) beside its own
# sources in site-packages, a folder shared by every process and every project on the machine; a
# cache file left inconsistent there has segfaulted pyin. polyvox keeps its own cache instead
# (set before numba is imported anywhere, and inherited by every worker), which the process
# pool's fork server fills once before any worker starts (polyvox.signal.jit).
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                                      "polyvox", "numba"))
