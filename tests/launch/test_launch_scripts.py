"""The launch scripts print the right commands with --dry-run, reject bad options, and run through stubs.

No gcloud, ssh or SLURM is needed: dry runs only print, and the runs that execute put stub `gcloud`, `ssh`,
`srun`, `scontrol` and `python` programs first on PATH (or name them through the scripts' environment
variables). Each stub runs the remote command line locally, so the quoting a real shell on a worker would see
is what these tests check.
"""

import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
TRICKY = "--config.sample.prompts=a red circle;a blue square"  # a space and a `;` must survive both shells
TPU = ["--tpu", "my-tpu", "--zone", "us-west4-a"]


def _run(script, *args, env=None, extra_env=None):
  environment = dict(os.environ if env is None else env, **(extra_env or {}))
  return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, env=environment,
                        timeout=60)


def _dry(script, *args, **kwargs):
  """The printed commands, one list of words per line (as the shell would split them)."""
  result = _run(script, *args, **kwargs)
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines()]


def _lines(script, *args, **kwargs):
  result = _run(script, *args, **kwargs)
  assert result.returncode == 0, result.stderr
  return [line.rstrip() for line in result.stdout.splitlines()]


def _stub(directory, name, body):
  path = Path(directory) / name
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(0o755)
  return path


def _stub_env(bin_dir, **variables):
  return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **variables)


def _wait_for(path, timeout=10.0):
  deadline = time.monotonic() + timeout
  while not path.exists() and time.monotonic() < deadline:
    time.sleep(0.02)
  assert path.exists(), f"{path} never appeared"
  time.sleep(0.05)  # let the writer finish
  return path.read_text()


# A python stub: writes its arguments, one per line, to $ARGS_DIR/<process id or "args">.txt and exits
# with $FAIL_CODE when its --process_id is $FAIL_ID.
PYTHON_STUB = r"""
name=args
for a in "$@"; do case "$a" in --process_id=*) name=${a#--process_id=} ;; esac; done
printf '%s\n' "$@" > "$ARGS_DIR/$name.txt.tmp"
mv "$ARGS_DIR/$name.txt.tmp" "$ARGS_DIR/$name.txt"
echo "stub python ran in $PWD"
if [[ "$name" == "${FAIL_ID:-none}" ]]; then exit "${FAIL_CODE:-1}"; fi
"""


# ---------------------------------------------------------------------------------------------- tpu_vm.sh


@pytest.mark.slow
def test_tpu_create_on_demand_spot_and_preemptible():
  assert _lines("tpu_vm.sh", "create", *TPU, "--accelerator-type", "v5litepod-16", "--spot", "--dry-run") == [
      "gcloud compute tpus tpu-vm create my-tpu --zone us-west4-a --accelerator-type v5litepod-16 "
      "--version v2-alpha-tpuv5-lite --spot"]
  assert _lines("tpu_vm.sh", "create", *TPU, "--accelerator-type", "v4-32", "--dry-run") == [
      "gcloud compute tpus tpu-vm create my-tpu --zone us-west4-a --accelerator-type v4-32 "
      "--version tpu-ubuntu2204-base"]
  assert _lines("tpu_vm.sh", "create", *TPU, "--accelerator-type", "v4-8", "--preemptible", "--project", "my-proj",
                "--dry-run") == [
      "gcloud compute tpus tpu-vm create my-tpu --zone us-west4-a --accelerator-type v4-8 "
      "--version tpu-ubuntu2204-base --preemptible --project my-proj"]


@pytest.mark.slow
@pytest.mark.parametrize("accelerator, runtime", [
    ("v5litepod-256", "v2-alpha-tpuv5-lite"), ("v4-32", "tpu-ubuntu2204-base"), ("v3-8", "tpu-ubuntu2204-base"),
    ("v5p-8", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e")])
def test_tpu_create_default_runtime(accelerator, runtime):
  [command] = _dry("tpu_vm.sh", "create", *TPU, "--accelerator-type", accelerator, "--dry-run")
  assert command[command.index("--version") + 1] == runtime
  [command] = _dry("tpu_vm.sh", "create", *TPU, "--accelerator-type", accelerator, "--version", "custom-rt",
                   "--dry-run")
  assert command[command.index("--version") + 1] == "custom-rt"


@pytest.mark.slow
def test_tpu_create_queued():
  assert _lines("tpu_vm.sh", "create", *TPU, "--accelerator-type", "v5litepod-256", "--queued", "--spot",
                "--valid-until-duration", "24h", "--project", "my-proj", "--dry-run") == [
      "gcloud compute tpus queued-resources create my-tpu-qr --node-id my-tpu --zone us-west4-a "
      "--accelerator-type v5litepod-256 --runtime-version v2-alpha-tpuv5-lite --spot --valid-until-duration 24h "
      "--project my-proj"]
  assert _lines("tpu_vm.sh", "create", *TPU, "--accelerator-type", "v4-32", "--queued", "--dry-run") == [
      "gcloud compute tpus queued-resources create my-tpu-qr --node-id my-tpu --zone us-west4-a "
      "--accelerator-type v4-32 --runtime-version tpu-ubuntu2204-base"]


@pytest.mark.slow
def test_tpu_install_copy_and_clone():
  assert _dry("tpu_vm.sh", "install", *TPU, "--project", "p", "--dry-run") == [
      ["cd", str(ROOT)],
      ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", ".", "my-tpu:~/tokgen_jax", "--worker=all",
       "--zone", "us-west4-a", "--project", "p"],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone", "us-west4-a", "--worker=all", "--command",
       "cd ~/tokgen_jax && python3 -m pip install -e '.[tpu]'", "--project", "p"]]
  assert _dry("tpu_vm.sh", "install", *TPU, "--copy", "--dry-run") == _dry("tpu_vm.sh", "install", *TPU, "--dry-run")
  [clone] = _dry("tpu_vm.sh", "install", *TPU, "--repo-url", "https://github.com/me/tokgen_jax.git", "--branch",
                 "dev", "--dry-run")
  assert clone[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone", "us-west4-a", "--worker=all"]
  remote = clone[clone.index("--command") + 1]
  assert "git clone --branch dev https://github.com/me/tokgen_jax.git ~/tokgen_jax" in remote
  assert remote.endswith("&& cd ~/tokgen_jax && python3 -m pip install -e '.[tpu]'")


@pytest.mark.slow
def test_tpu_run_quotes_tokgen_arguments_for_the_remote_shell():
  check, command = _dry("tpu_vm.sh", "run", *TPU, "--project", "my-proj", "--dry-run", "--",
                        "--config=experiments/quickstart.py:full", "--workdir=gs://bucket/run", TRICKY)
  # First every worker checks it can write the bucket (the job would otherwise fail at its first save).
  assert check[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone", "us-west4-a", "--worker=all"]
  assert check[check.index("--command") + 1] == ("cd ~/tokgen_jax && python3 -m tokgen_jax.data.files "
                                                 "gs://bucket/run")
  remote = command[command.index("--command") + 1]
  assert command == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone", "us-west4-a", "--worker=all",
                     "--command", remote, "--project", "my-proj"]
  assert remote.startswith("cd ~/tokgen_jax && nohup python3 -m tokgen_jax.main --distributed ")
  assert remote.endswith(" > ~/tokgen_run.log 2>&1 < /dev/null &")  # background: the ssh returns at once
  words = shlex.split(remote)
  assert words[words.index("--distributed") + 1:words.index(">")] == [
      "--config=experiments/quickstart.py:full", "--workdir=gs://bucket/run", TRICKY]


@pytest.mark.slow
def test_tpu_without_subcommand_behaves_like_run():
  args = [*TPU, "--dry-run", "--", "--config=experiments/quickstart.py:full", TRICKY]
  assert _lines("tpu_vm.sh", *args) == _lines("tpu_vm.sh", "run", *args)
  result = _run("tpu_vm.sh", *args)
  assert "launch/tpu_vm.sh logs --tpu my-tpu --zone us-west4-a" in result.stderr  # how to stream the log


@pytest.mark.slow
def test_tpu_run_custom_repo_log_and_python():
  [command] = _dry("tpu_vm.sh", "run", *TPU, "--repo", "/opt/tok gen", "--log", "runs/q1.log", "--python",
                   "/opt/venv/bin/python", "--dry-run", "--", "--workdir=/tmp/w")
  remote = command[command.index("--command") + 1]
  assert shlex.split(remote) == ["cd", "/opt/tok gen", "&&", "nohup", "/opt/venv/bin/python", "-m",
                                 "tokgen_jax.main", "--distributed", "--workdir=/tmp/w", ">", "~/runs/q1.log",
                                 "2>&1", "<", "/dev/null", "&"]


@pytest.mark.slow
def test_tpu_logs_copy_delete():
  assert _dry("tpu_vm.sh", "logs", *TPU, "--dry-run") == [
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone", "us-west4-a", "--worker=0", "--command",
       "tail -f ~/tokgen_run.log"]]
  assert _dry("tpu_vm.sh", "logs", *TPU, "--worker", "3", "--log", "/tmp/x.log", "--dry-run")[0][8:11] == [
      "--worker=3", "--command", "tail -f /tmp/x.log"]
  assert _lines("tpu_vm.sh", "copy", *TPU, "--from", "/tmp/run/eval", "--to", "results", "--project", "p",
                "--dry-run") == [
      "gcloud compute tpus tpu-vm scp --recurse my-tpu:/tmp/run/eval results --worker=0 --zone us-west4-a --project p"]
  assert _lines("tpu_vm.sh", "delete", *TPU, "--dry-run") == [
      "gcloud compute tpus tpu-vm delete my-tpu --zone us-west4-a --quiet"]
  assert _lines("tpu_vm.sh", "delete", *TPU, "--queued", "--project", "p", "--dry-run") == [
      "gcloud compute tpus tpu-vm delete my-tpu --zone us-west4-a --quiet --project p",
      "gcloud compute tpus queued-resources delete my-tpu-qr --zone us-west4-a --quiet --force --project p"]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["run", "--zone", "z", "--dry-run", "--", "--workdir=/w"], "--tpu NAME is required"),
    (["--zone", "z", "--dry-run", "--", "--workdir=/w"], "--tpu NAME is required"),
    (["run", "--tpu", "t", "--dry-run", "--", "--workdir=/w"], "--zone ZONE is required"),
    (["run", "--tpu", "t", "--zone", "z", "--bogus", "--", "--workdir=/w"], "unknown option --bogus"),
    (["logs", "--tpu", "t", "--zone", "z", "--spot"], "unknown option --spot for 'logs'"),
    (["frobnicate", "--tpu", "t"], "unknown subcommand 'frobnicate'"),
    ([], "missing subcommand"),
    (["run", "--tpu"], "--tpu needs a value"),
    (["run", "--tpu", "--zone", "z"], "--tpu needs a value"),
    (["run", "--tpu", "t", "--zone", "z", "--dry-run"], "run needs tokgen arguments"),
    (["create", "--tpu", "t", "--zone", "z", "--dry-run"], "--accelerator-type"),
    (["create", "--tpu", "t", "--zone", "z", "--accelerator-type", "tpu9-8"], "pass --version"),
    (["create", "--tpu", "t", "--zone", "z", "--accelerator-type", "v4-8", "--spot", "--preemptible"], "exclude"),
    (["create", "--tpu", "t", "--zone", "z", "--accelerator-type", "v4-8", "--queued", "--preemptible"], "--spot"),
    (["create", "--tpu", "t", "--zone", "z", "--accelerator-type", "v4-8", "--valid-until-duration", "1h"],
     "needs --queued"),
    (["install", "--tpu", "t", "--zone", "z", "--copy", "--repo-url", "u"], "exclude"),
    (["install", "--tpu", "t", "--zone", "z", "--branch", "b"], "--branch needs --repo-url"),
    (["copy", "--tpu", "t", "--zone", "z", "--from", "/x"], "--to"),
    (["logs", "--tpu", "t", "--zone", "z", "--worker", "all"], "worker index"),
    (["logs", "--tpu", "t", "--zone", "z", "--", "extra"], "takes no arguments after --"),
    (["--dry-run", "create", "--tpu", "t", "--zone", "z"], "the subcommand comes first"),
])
def test_tpu_errors_exit_2_with_a_message(args, message):
  result = _run("tpu_vm.sh", *args)
  assert result.returncode == 2, (result.stdout, result.stderr)
  assert message in result.stderr
  assert result.stdout == ""  # nothing would have been run


@pytest.mark.slow
def test_tpu_help():
  result = _run("tpu_vm.sh", "--help")
  assert result.returncode == 0
  assert "v2-alpha-tpuv5-lite" in result.stdout and "create" in result.stdout and "set -euo" not in result.stdout


@pytest.mark.slow
def test_tpu_run_and_queued_delete_through_a_gcloud_stub(tmp_path):
  """The remote command, run by a shell as a worker would, starts tokgen in the background with the arguments."""
  bin_dir, home = tmp_path / "bin", tmp_path / "home"
  bin_dir.mkdir()
  (home / "tokgen_jax").mkdir(parents=True)
  calls = tmp_path / "gcloud_calls.txt"
  _stub(bin_dir, "gcloud", r"""
printf '%s\n' "$*" >> "$GCLOUD_CALLS"
[[ "$*" == *"tpu-vm delete"* ]] && exit 1  # as while a queued resource still waits: no TPU VM yet
while [[ $# -gt 0 ]]; do [[ "$1" == --command ]] && exec bash -c "$2"; shift; done
""")
  _stub(bin_dir, "python3", PYTHON_STUB)
  env = _stub_env(bin_dir, HOME=str(home), GCLOUD_CALLS=str(calls), ARGS_DIR=str(tmp_path))
  result = _run("tpu_vm.sh", "run", *TPU, "--", "--config=experiments/quickstart.py:full", TRICKY, env=env)
  assert result.returncode == 0, result.stderr
  args = _wait_for(tmp_path / "args.txt").splitlines()
  assert args == ["-m", "tokgen_jax.main", "--distributed", "--config=experiments/quickstart.py:full", TRICKY]
  assert f"stub python ran in {home / 'tokgen_jax'}" in _wait_for_text(home / "tokgen_run.log", "stub python")
  result = _run("tpu_vm.sh", "delete", *TPU, "--queued", env=env)
  assert result.returncode == 0, result.stderr
  assert "still queued?" in result.stderr
  assert calls.read_text().splitlines()[-2:] == [
      "compute tpus tpu-vm delete my-tpu --zone us-west4-a --quiet",
      "compute tpus queued-resources delete my-tpu-qr --zone us-west4-a --quiet --force"]


def _wait_for_text(path, text, timeout=10.0):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if path.exists() and text in path.read_text():
      break
    time.sleep(0.02)
  return path.read_text() if path.exists() else ""


# ----------------------------------------------------------------------------------------- gpu_slurm.sbatch


def _scontrol_stub(tmp_path, *hosts):
  lines = "".join(f"echo {h}\n" for h in hosts)
  return _stub(tmp_path, "scontrol", f'[[ "$1 $2" == "show hostnames" && -n "$3" ]] || exit 9\n{lines}')


@pytest.mark.slow
def test_slurm_dry_run(tmp_path):
  scontrol = _scontrol_stub(tmp_path, "gpu-a01", "gpu-a02", "gpu-a03")
  env = dict(DRY_RUN="1", SCONTROL=str(scontrol), SLURM_JOB_NODELIST="gpu-a[01-03]", SLURM_NNODES="3",
             SLURM_JOB_ID="4242", SLURM_NODEID="0")
  [command] = _dry("gpu_slurm.sbatch", "--config=experiments/quickstart.py:full", TRICKY, extra_env=env)
  assert command[:6] == ["srun", "--nodes=3", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "bash", "-c"]
  # Each task expands its own SLURM_NODEID; the batch shell must not.
  assert shlex.split(command[6]) == [
      "exec", "python", "-m", "tokgen_jax.main", "--coordinator_address=gpu-a01:24242", "--num_processes=3",
      "--process_id=$SLURM_NODEID", "--config=experiments/quickstart.py:full", TRICKY]
  assert '--process_id="$SLURM_NODEID"' in command[6]
  env.update(TOKGEN_PORT="5555", PYTHON="/opt/venv/bin/python")
  del env["SLURM_NNODES"]  # counted from the host names
  [command] = _dry("gpu_slurm.sbatch", "--workdir=/w", extra_env=env)
  assert command[1] == "--nodes=3"
  assert shlex.split(command[6])[:6] == ["exec", "/opt/venv/bin/python", "-m", "tokgen_jax.main",
                                         "--coordinator_address=gpu-a01:5555", "--num_processes=3"]


@pytest.mark.slow
def test_slurm_runs_one_process_per_node_through_an_srun_stub(tmp_path):
  """A stub srun runs the task once per node with that node's SLURM_NODEID, as SLURM would."""
  scontrol = _scontrol_stub(tmp_path, "gpu-a01", "gpu-a02")
  srun = _stub(tmp_path, "srun", r"""
while [[ "$1" == --* ]]; do shift; done
for ((node = 0; node < SLURM_NNODES; node++)); do SLURM_NODEID=$node "$@" || exit $?; done
""")
  python = _stub(tmp_path, "python", PYTHON_STUB)
  env = dict(SCONTROL=str(scontrol), SRUN=str(srun), PYTHON=str(python), SLURM_JOB_NODELIST="gpu-a[01-02]",
             SLURM_NNODES="2", SLURM_NODEID="0", SLURM_JOB_ID="7", SLURM_SUBMIT_DIR=str(tmp_path),
             ARGS_DIR=str(tmp_path))
  result = _run("gpu_slurm.sbatch", "--workdir=/w", TRICKY, extra_env=env)
  assert result.returncode == 0, result.stderr
  for node in range(2):
    assert (tmp_path / f"{node}.txt").read_text().splitlines() == [
        "-m", "tokgen_jax.main", "--coordinator_address=gpu-a01:20007", "--num_processes=2",
        f"--process_id={node}", "--workdir=/w", TRICKY]
  assert f"stub python ran in {tmp_path}" in result.stdout


@pytest.mark.slow
def test_slurm_errors(tmp_path):
  scontrol = _scontrol_stub(tmp_path, "gpu-a01")
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  result = _run("gpu_slurm.sbatch", "--workdir=/w", env=env, extra_env=dict(DRY_RUN="1", SCONTROL=str(scontrol)))
  assert result.returncode == 2 and "SLURM_JOB_NODELIST" in result.stderr and result.stdout == ""
  result = _run("gpu_slurm.sbatch", env=env,
                extra_env=dict(DRY_RUN="1", SCONTROL=str(scontrol), SLURM_JOB_NODELIST="gpu-a01"))
  assert result.returncode == 2 and "pass tokgen arguments" in result.stderr


def test_slurm_header():
  header = [line for line in (LAUNCH / "gpu_slurm.sbatch").read_text().splitlines() if line.startswith("#SBATCH")]
  options = {line.split()[1].split("=")[0] for line in header}
  assert {"--nodes", "--ntasks-per-node", "--gpus-per-node", "--time"} <= options
  assert "#SBATCH --ntasks-per-node=1" in header


# --------------------------------------------------------------------------------------- gpu_multinode.sh


@pytest.mark.slow
def test_multinode_dry_run():
  commands = _dry("gpu_multinode.sh", "--hosts", "me@gpu1,gpu2,gpu3", "--port", "23456", "--repo", "/shared/tokgen",
                  "--dry-run", "--", "--config=experiments/quickstart.py:full", TRICKY)
  assert len(commands) == 3
  for i, (command, host) in enumerate(zip(commands, ["me@gpu1", "gpu2", "gpu3"])):
    assert command[:-1] == ["ssh", "-n", "-o", "BatchMode=yes", host]
    assert shlex.split(command[-1]) == [
        "cd", "/shared/tokgen", "&&", "python", "-m", "tokgen_jax.main", "--coordinator_address=gpu1:23456",
        "--num_processes=3", f"--process_id={i}", "--config=experiments/quickstart.py:full", TRICKY]
  [command] = _dry("gpu_multinode.sh", "--hosts", "gpu1", "--coordinator", "10.0.0.5", "--python",
                   "~/venv/bin/python", "--dry-run", "--", "--workdir=/w")
  assert command[-1] == (f"cd {shlex.quote(str(ROOT))} && ~/venv/bin/python -m tokgen_jax.main "
                         "--coordinator_address=10.0.0.5:12355 --num_processes=1 --process_id=0 --workdir=/w")


@pytest.mark.slow
def test_multinode_runs_every_host_and_reports_failures(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _stub(bin_dir, "ssh", r"""
while [[ "$1" == -* ]]; do [[ "$1" == -o ]] && shift; shift; done
shift  # the host
exec bash -c "$1"
""")
  _stub(bin_dir, "python", PYTHON_STUB)
  env = _stub_env(bin_dir, ARGS_DIR=str(tmp_path))
  args = ["--hosts", "h1,h2", "--repo", str(tmp_path), "--", "--workdir=/w", TRICKY]
  result = _run("gpu_multinode.sh", *args, env=env)
  assert result.returncode == 0, result.stderr
  for i in range(2):
    assert (tmp_path / f"{i}.txt").read_text().splitlines() == [
        "-m", "tokgen_jax.main", "--coordinator_address=h1:12355", "--num_processes=2", f"--process_id={i}",
        "--workdir=/w", TRICKY]
  result = _run("gpu_multinode.sh", *args, env=dict(env, FAIL_ID="1", FAIL_CODE="3"))
  assert result.returncode == 3
  assert "process 1 on h2 failed (exit 3)" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--dry-run", "--", "--workdir=/w"], "--hosts"),
    (["--hosts", "a,b", "--frob", "--", "--workdir=/w"], "unknown option --frob"),
    (["--hosts"], "--hosts needs a value"),
    (["--hosts", "a", "--port", "x", "--", "--workdir=/w"], "--port takes a number"),
    (["--hosts", "a,,b", "--dry-run", "--", "--workdir=/w"], "empty host name"),
    (["--hosts", "a", "--dry-run"], "pass tokgen arguments"),
])
def test_multinode_errors(args, message):
  result = _run("gpu_multinode.sh", *args)
  assert result.returncode == 2 and message in result.stderr and result.stdout == ""


# ----------------------------------------------------------------------------------- local_multiprocess.sh


@pytest.mark.slow
def test_local_multiprocess_dry_run():
  assert _lines("local_multiprocess.sh", "--dry-run", "-n", "3", "-d", "4", "-p", "23456", "--",
                "--config=experiments/quickstart.py:local", "--workdir=/tmp/mp", TRICKY) == [
      "env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 TOKGEN_COORDINATOR=127.0.0.1:23456 "
      f"TOKGEN_NUM_PROCESSES=3 TOKGEN_PROCESS_ID={i} python -m tokgen_jax.main "
      "--config=experiments/quickstart.py:local --workdir=/tmp/mp --config.sample.prompts=a\\ red\\ circle\\;a\\ "
      "blue\\ square" for i in range(3)]


@pytest.mark.slow
def test_local_multiprocess_runs_processes_through_a_python_stub(tmp_path):
  bin_dir, workdir = tmp_path / "bin", tmp_path / "work"
  bin_dir.mkdir()
  _stub(bin_dir, "python", r"""
printf '%s\n' "$TOKGEN_COORDINATOR $TOKGEN_NUM_PROCESSES $TOKGEN_PROCESS_ID $JAX_PLATFORMS $XLA_FLAGS" "$@"
[[ "$TOKGEN_PROCESS_ID" == "${FAIL_ID:-none}" ]] && exit 4
exit 0
""")
  env = _stub_env(bin_dir)
  args = ["-n", "2", "-d", "3", "-p", "23457", "--", f"--workdir={workdir}", TRICKY]
  result = _run("local_multiprocess.sh", *args, env=env)
  assert result.returncode == 0, result.stderr
  for i in range(2):
    assert (workdir / f"process_{i}.log").read_text().splitlines() == [
        f"127.0.0.1:23457 2 {i} cpu --xla_force_host_platform_device_count=3", "-m", "tokgen_jax.main",
        f"--workdir={workdir}", TRICKY]
  result = _run("local_multiprocess.sh", *args, env=dict(env, FAIL_ID="1"))
  assert result.returncode == 4 and "process 1 failed (exit 4)" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--dry-run", "--", "--config=x"], "--workdir"),
    (["--bogus", "--", "--workdir=/w"], "unknown option --bogus"),
    (["-n"], "-n needs a number"),
    (["-d", "x", "--", "--workdir=/w"], "-d needs a number"),
])
def test_local_multiprocess_errors(args, message):
  result = _run("local_multiprocess.sh", *args)
  assert result.returncode == 2 and message in result.stderr and result.stdout == ""


# -------------------------------------------------------------------------------------------------- all


@pytest.mark.slow
@pytest.mark.parametrize("script", ["tpu_vm.sh", "gpu_slurm.sbatch", "gpu_multinode.sh", "local_multiprocess.sh"])
def test_scripts_parse_and_are_strict(script):
  text = (LAUNCH / script).read_text()
  assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
  assert os.access(LAUNCH / script, os.X_OK)  # the README runs them as launch/NAME
  result = subprocess.run(["bash", "-n", str(LAUNCH / script)], capture_output=True, text=True, timeout=30)
  assert result.returncode == 0, result.stderr
