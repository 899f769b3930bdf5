"""Tiny configs shared by the trainer, task and CLI tests."""

import json
import urllib.error
import urllib.request
import uuid

import jax

from tokgen_jax.config import load_experiment

QUICKSTART = "experiments/quickstart.py:local"


def perturb_params(params, seed=0, scale=0.05):
  """Every parameter plus small noise: leaves adaLN-Zero's identity so every path carries signal."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [a + scale * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])

TINY_OVERRIDES = {
    "model.channels": 8, "model.channel_multipliers": (1, 2), "model.num_groups": 4,
    "model.quantizer.codebook_size": 64, "model.quantizer.dim": 4,
    "data.image_size": 16, "data.eval_image_size": 64, "data.num_threads": 1, "data.prefetch": 1,
    "batch_size": 8, "eval.batch_size": 32, "total_steps": 6, "log_every_steps": 2, "eval_every_steps": 0,
    "checkpoint_every_steps": 3, "optimizer.warmup_steps": 2,
}


def set_fields(config, overrides: dict):
  """Set dotted keys (`"model.quantizer.dim": 4`) on an unlocked copy's fields."""
  with config.unlocked():
    for key, value in overrides.items():
      *parents, leaf = key.split(".")
      node = config
      for parent in parents:
        node = node[parent]
      node[leaf] = value
  return config


def tiny_config(experiment: str = QUICKSTART, quantizer_overrides: dict | None = None, **overrides):
  """The experiment at test size; `quantizer_overrides` replaces the VQ-specific tiny settings."""
  tiny = dict(TINY_OVERRIDES)
  if quantizer_overrides is not None:
    tiny = {k: v for k, v in tiny.items() if not k.startswith("model.quantizer.")} | quantizer_overrides
  return set_fields(load_experiment(experiment), tiny | overrides)


def cli_overrides(**overrides) -> list[str]:
  """The same tiny config as `--config.key=value` flags."""
  return [f"--config.{key}={value}" for key, value in (TINY_OVERRIDES | overrides).items()]


# The ar_shapes VQGAN at test size over a 48 + 8 scene shapes world (16 px scenes, 4x4 tokens of 32 codes).
TINY_SHAPES_TOKENIZER = {"model.channels": 8, "model.channel_multipliers": (1, 2, 2), "model.num_groups": 4,
                         "model.quantizer.codebook_size": 32, "model.quantizer.dim": 4, "batch_size": 8,
                         "total_steps": 2, "eval_every_steps": 0, "checkpoint_every_steps": 2, "eval.batch_size": 8}


def tiny_shapes_data():
  from tokgen_jax.configs import data as data_presets  # pylint: disable=g-import-not-at-top
  return data_presets.shapes(16, num_shapes=1, train_examples=48, eval_examples=8, num_threads=1, prefetch=1)


def tiny_shapes_tokenizer():
  return set_fields(load_experiment("experiments/ar_shapes.py:tokenizer"), TINY_SHAPES_TOKENIZER | {
      "data": tiny_shapes_data()})


def create_bucket(emulator_url: str) -> str:
  """A fresh bucket on the GCS emulator at `emulator_url`, as `gs://name`."""
  name = f"test-{uuid.uuid4().hex[:12]}"
  request = urllib.request.Request(f"{emulator_url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
                                   headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(request) as response:
    assert response.status == 200
  return f"gs://{name}"


class ReadOnlyStorageProxy:
  """An HTTP endpoint in front of the GCS emulator that serves reads and answers every write with GCS's 403, as
  Cloud Storage does for an account holding only roles/storage.objectViewer (the emulator has no IAM)."""

  def __init__(self, upstream_url: str):
    import http.server  # pylint: disable=g-import-not-at-top
    import threading  # pylint: disable=g-import-not-at-top

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):
        del args

      def _forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        request = urllib.request.Request(upstream_url + self.path, data=body, method=self.command,
                                         headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
        try:
          with urllib.request.urlopen(request) as response:
            status, headers, payload = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
          status, headers, payload = error.code, error.headers, error.read()
        self._reply(status, headers.get("Content-Type", "application/json"), payload)

      def _forbid(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
          self.rfile.read(length)
        message = ("reader@project.iam.gserviceaccount.com does not have storage.objects.create access to the "
                   "Google Cloud Storage object. Permission 'storage.objects.create' denied on resource.")
        payload = json.dumps({"error": {"code": 403, "message": message,
                                        "errors": [{"message": message, "reason": "forbidden"}]}}).encode()
        self._reply(403, "application/json", payload)

      def _reply(self, status, content_type, payload):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
          self.wfile.write(payload)

      do_GET = do_HEAD = _forward
      do_POST = do_PUT = do_PATCH = do_DELETE = _forbid

    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self._server.server_port}"
    threading.Thread(target=self._server.serve_forever, daemon=True).start()

  def close(self):
    self._server.shutdown()
    self._server.server_close()
