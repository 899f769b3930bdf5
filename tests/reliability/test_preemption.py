"""Preemption: SIGTERM saves the step it arrives at (not the end of the run) and exits 0, and the rerun loses no
step.

One process: the trainer's SIGTERM handler. Two processes (127.0.0.1, gloo): SIGTERM reaches one of them only, as a
preempted host would; JAX's preemption service tells the other, and both save the same step and exit 0.
"""

import signal
import subprocess
import time

import portpicker
import pytest

from tests.reliability import faults

pytestmark = pytest.mark.slow  # every test launches `tokgen` child processes

LONG = dict(total_steps=400, log_every_steps=1, checkpoint_every_steps=1000, eval_every_steps=0)


def _terminate_after(processes, workdir, steps: int, signalled) -> tuple[int, float]:
  """Wait until `steps` steps are logged, SIGTERM `signalled`; returns the last step logged before the signal and
  the seconds until all processes exit (printed, not asserted: wall time depends on the machine's load)."""
  assert faults.wait_for(lambda: len(faults.logged_steps(workdir)) >= steps, processes[0])
  logged = faults.logged_steps(workdir)[-1]
  start = time.monotonic()
  signalled.send_signal(signal.SIGTERM)
  for process in processes:
    process.wait(timeout=120)
  return logged, time.monotonic() - start


def _preempted_step(output: str) -> int:
  line = next(line for line in output.splitlines() if line.startswith("preempted: saved step"))
  return int(line.split()[3].rstrip(";"))


def test_sigterm_saves_the_current_step_and_the_rerun_loses_none(tmp_path):
  process = subprocess.Popen(faults.command(tmp_path, **LONG), env=faults.child_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  logged, seconds = _terminate_after([process], tmp_path, 5, process)
  output = process.stdout.read()
  assert process.returncode == 0, output[-3000:]
  step = _preempted_step(output)
  print(f"\nSIGTERM at step >= 5: saved step {step} and exited 0 in {seconds:.2f} s")
  assert logged <= step < LONG["total_steps"]  # saved where the signal arrived, not at the end of the run
  assert faults.saved_steps(tmp_path) == [step]
  assert faults.logged_steps(tmp_path)[-1] == step  # every step it trained is in the checkpoint
  logged_before = faults.metrics_size(tmp_path)
  faults.run_child(tmp_path, **(LONG | {"total_steps": step + 2}))
  assert faults.logged_steps(tmp_path, logged_before) == [step + 1, step + 2]  # resumed right after it


def _launch_two(workdir, settings):
  port = portpicker.pick_unused_port()
  return [subprocess.Popen(
      faults.command(workdir, **settings),
      env=faults.child_env(devices=2, TOKGEN_COORDINATOR=f"127.0.0.1:{port}", TOKGEN_NUM_PROCESSES="2",
                           TOKGEN_PROCESS_ID=str(index)),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for index in range(2)]


def test_sigterm_on_one_host_saves_one_step_on_all(tmp_path):
  processes = _launch_two(tmp_path, LONG)
  logged, seconds = _terminate_after(processes, tmp_path, 5, processes[1])  # process 0 is not signalled
  outputs = [process.stdout.read() for process in processes]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
  step = _preempted_step(outputs[0])
  print(f"\ntwo processes, SIGTERM to process 1 only: both saved step {step} and exited 0 in {seconds:.2f} s")
  assert logged <= step < LONG["total_steps"]  # saved where the signal arrived, not at the end of the run
  assert faults.saved_steps(tmp_path) == [step]
  assert _preempted_step(outputs[1]) == step  # both agreed on the step
