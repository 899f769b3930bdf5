"""Local and gs:// (emulator) paths behave the same for what the project relies on."""

import json
import os
import subprocess
import sys

import pytest

from tokgen_jax.data import files
from tests.helpers import create_bucket
from tokgen_jax.errors import ConfigError


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
  if request.param == "local":
    return str(tmp_path)
  return request.getfixturevalue("gcs_bucket") + "/run"


def test_as_path_keeps_urls_and_makes_local_paths_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert os.fspath(files.as_path("gs://bucket/a/b")) == "gs://bucket/a/b"
  assert os.fspath(files.as_path("run")) == os.path.join(str(tmp_path), "run")
  assert files.bucket_of("gs://bucket/a/b") == "bucket"
  assert files.is_remote("gs://b/x") and not files.is_remote("/tmp/x")


def test_atomic_path_writes_whole_file_or_nothing(root):
  target = files.as_path(root) / "eval" / "step_1.json"
  with files.atomic_path(target) as temporary:
    with open(temporary, "w") as file:
      json.dump({"psnr": 23.5}, file)
  assert json.loads(target.read_text()) == {"psnr": 23.5}
  with pytest.raises(RuntimeError):
    with files.atomic_path(target) as temporary:
      with open(temporary, "w") as file:
        file.write('{"psnr": ')
      raise RuntimeError("killed mid-write")
  assert json.loads(target.read_text()) == {"psnr": 23.5}  # the old file, untouched
  assert sorted(p.name for p in target.parent.iterdir()) == ["step_1.json"]  # no temporary left behind


def test_file_sizes_and_move_tree(root):
  source = files.as_path(root) / "checkpoints" / "7"
  files.write_text(source / "a.txt", "abc")
  files.write_text(source / "sub" / "b.bin", "12345")
  assert files.file_sizes(source) == {"a.txt": 3, "sub/b.bin": 5}
  target = files.as_path(root) / "damaged" / "7"
  files.move_tree(source, target)
  assert not source.exists()
  assert files.file_sizes(target) == {"a.txt": 3, "sub/b.bin": 5}
  assert (target / "sub" / "b.bin").read_text() == "12345"


def test_mirrored_directory_appends_after_existing_lines_and_uploads_whole_files(root):
  target = files.as_path(root)
  files.write_text(target / "log.jsonl", '{"step": 1}\n')
  mirror = files.MirroredDirectory(target, min_interval_s=3600.0)
  local = mirror.fetch("log.jsonl")
  mirror.sync()  # the first sync uploads at once (nothing changed yet) and starts the interval
  with open(local, "a") as file:
    file.write('{"step": 2}\n')
  mirror.sync()  # within the interval: a remote target is not rewritten yet
  expected_now = '{"step": 1}\n{"step": 2}\n' if not mirror.remote else '{"step": 1}\n'
  assert (target / "log.jsonl").read_text() == expected_now
  mirror.close()  # forced
  assert (target / "log.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'


def test_check_writable_passes_on_a_bucket_and_creates_the_directory(gcs_bucket, tmp_path):
  files.check_writable(gcs_bucket + "/new/run")
  files.check_writable(str(tmp_path / "new" / "run"))
  assert (tmp_path / "new" / "run").is_dir() and not list((tmp_path / "new" / "run").iterdir())


def test_check_writable_names_a_missing_bucket(gcs_server):
  with pytest.raises(ConfigError, match=r"--workdir=gs://no-such-bucket-x/run: the bucket gs://no-such-bucket-x does "
                                        r"not exist\. Create it"):
    files.check_writable("gs://no-such-bucket-x/run")


def test_check_writable_names_a_bucket_this_account_may_only_read(gcs_server, read_only_endpoint):
  bucket = create_bucket(gcs_server.url)
  assert files.as_path(bucket).exists()  # reads still pass through the proxy
  with pytest.raises(ConfigError, match=rf"--workdir={bucket}/run: no permission to write there \(Forbidden: .*"
                                        r"storage\.objects\.create.*roles/storage\.objectAdmin"):
    files.check_writable(bucket + "/run")


def test_check_writable_names_a_local_path_under_a_file(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(ConfigError, match="cannot write there"):
    files.check_writable(str(tmp_path / "file" / "run"), what="config.data.path")


@pytest.mark.slow  # starts a process
def test_check_writable_names_an_unreachable_endpoint_in_seconds():
  code = ("import os; os.environ['STORAGE_EMULATOR_HOST'] = 'http://127.0.0.1:9'\n"
          "from tokgen_jax.data import files\nfiles.check_writable('gs://bucket/run')")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert result.returncode != 0
  assert "--workdir=gs://bucket/run: the Cloud Storage endpoint http://127.0.0.1:9 cannot be reached" in result.stderr


@pytest.mark.slow  # starts processes
def test_command_line_check_reports_each_path(gcs_bucket):
  command = [sys.executable, "-m", "tokgen_jax.data.files"]
  ok = subprocess.run(command + [gcs_bucket + "/run"], capture_output=True, text=True, timeout=60)
  assert ok.returncode == 0 and f"{gcs_bucket}/run is writable" in ok.stdout
  missing = subprocess.run(command + ["gs://no-such-bucket-y/run"], capture_output=True, text=True, timeout=60)
  assert missing.returncode == 1 and "the bucket gs://no-such-bucket-y does not exist" in missing.stderr


def test_local_cache_keeps_copies_in_use_and_evicts_the_least_recent_beyond_its_budget(gcs_bucket, tmp_path):
  bucket = files.as_path(gcs_bucket)
  for name, content in [("a", b"a" * 10), ("b", b"b" * 10), ("c", b"c" * 10)]:
    (bucket / name).write_bytes(content)
  cache = files.LocalFileCache(tmp_path / "cache", max_bytes=20)
  with cache.open(f"{gcs_bucket}/a") as a:
    with cache.open(f"{gcs_bucket}/b") as b:
      pass
    with cache.open(f"{gcs_bucket}/c") as c:
      assert [open(p, "rb").read() for p in (a, b, c)] == [b"a" * 10, b"b" * 10, b"c" * 10]
    # over the budget: b, the least recently used copy not in use, is deleted; a (in use, older) is kept
    assert os.path.exists(a) and not os.path.exists(b) and os.path.exists(c)
  (bucket / "b").write_bytes(b"B" * 12)  # a replaced object is fetched again
  with cache.open(f"{gcs_bucket}/b") as b_again:
    assert open(b_again, "rb").read() == b"B" * 12


def test_local_cache_mirror_copies_one_subtree_once_and_checks_free_space(gcs_bucket, tmp_path, monkeypatch):
  bucket = files.as_path(gcs_bucket)
  for relative in ["data/ds/1.0.0/x.bin", "data/ds/1.0.0/sub/y.bin", "data/other/z.bin"]:
    (bucket / relative).write_bytes(relative.encode())
  cache = files.LocalFileCache(tmp_path / "cache", max_bytes=0)
  local = cache.mirror(f"{gcs_bucket}/data", under="ds/1.0.0")
  assert files.relative_files(local) == ["ds/1.0.0/sub/y.bin", "ds/1.0.0/x.bin"]
  assert (files.as_path(local) / "ds/1.0.0/x.bin").read_bytes() == b"data/ds/1.0.0/x.bin"
  stamp = os.stat(os.path.join(local, "ds/1.0.0/x.bin")).st_mtime_ns
  assert cache.mirror(f"{gcs_bucket}/data", under="ds/1.0.0") == local
  assert os.stat(os.path.join(local, "ds/1.0.0/x.bin")).st_mtime_ns == stamp  # not downloaded again
  monkeypatch.setattr(files.shutil, "disk_usage", lambda _: shutil_usage(free=10))
  with pytest.raises(ConfigError, match=rf"{gcs_bucket}/data/other .* must be on local disk .* TOKGEN_CACHE_DIR"):
    cache.mirror(f"{gcs_bucket}/data", under="other")


def shutil_usage(free: int):
  import collections  # pylint: disable=g-import-not-at-top
  return collections.namedtuple("usage", "total used free")(free, 0, free)


def test_readable_file_and_directory_are_the_paths_themselves_on_local_disk(tmp_path):
  (tmp_path / "f").write_text("x")
  with files.readable_file(tmp_path / "f") as local:
    assert local == str(tmp_path / "f")
  assert files.readable_directory(tmp_path) == str(tmp_path)
