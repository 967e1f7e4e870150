"""polyvox: from a voice corpus to a deployed custom voice."""

import os
import warnings

__version__ = "0.1.0"

# librosa compiles its pitch kernels with numba and caches them (cache=True) beside its own
# sources in site-packages, a folder shared by every process and every project on the machine; a
# cache file left inconsistent there has segfaulted pyin. polyvox keeps its own cache instead
# (set before numba is imported anywhere, and inherited by every worker), which the process
# pool's fork server fills once before any worker starts (polyvox.signal.jit).
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                                      "polyvox", "numba"))

# torch's OpenMP (libgomp on Linux) makes a thread that reaches a barrier spin 300000 times before
# it sleeps. When another process holds one of the cores, the spinning thread burns the time its
# partner needs: a 2-thread training step beside one busy process took 9.7 s instead of 0.30 s
# (benchmarks/neighbour.py). 10000 spins cost nothing measurable alone and cut that to 0.9 s;
# polyvox.train.budget.ThreadGovernor does the rest. libgomp reads this once, when torch loads, so
# it is set here, before any polyvox module imports torch; a value the user set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

# polyvox works offline. Prefect, MLflow and other libraries that honour DO_NOT_TRACK would otherwise
# try to send usage data from every command and log an error when the network refuses it (the
# Makefile set these for `make demo`; `polyvox run` from a shell did not). A value the user set wins.
for _name, _value in (("DO_NOT_TRACK", "1"), ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
                      ("MLFLOW_DISABLE_TELEMETRY", "true")):
    os.environ.setdefault(_name, _value)

# webrtcvad (a dependency of the voice-activity check) imports pkg_resources, which warns on every
# import, in every worker; the warning is about webrtcvad's packaging, not about anything a user does.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated as an API", category=UserWarning)
