"""Test-session settings, applied before JAX initializes.

Every test process sees 8 CPU devices, so sharded and unsharded runs compare in one process. A session-wide
persistent compilation cache lets the many tests that compile the same tiny programs (and their subprocesses,
through the inherited environment) compile each once.
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="tokgen_jax_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Non-partitionable threefry compiles random initializers several times faster on CPU. It changes which random
# bits a key yields, not any property tested here; runs outside the tests keep JAX's default.
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")
