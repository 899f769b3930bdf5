import pytest

from tokgen_jax.bench import ar_sampling

TINY = ["--grid", "2,3", "--batch", "2", "--repeats", "1", "--vocab", "16"]


def test_benchmark_runs_both_samplers_and_reports_throughput_and_floor(capsys):
  result = ar_sampling.main(TINY + ["--cfg-scale", "2", "--cache-buckets", "2"])
  assert result["tokens"] == 6 and result["rows"] == 4
  for name in ("cached", "uncached"):
    assert result[f"{name}_s"] > 0 and result[f"{name}_tokens_per_s"] > 0
  assert result["speedup"] > 0
  # The floor is the larger of its two parts, each a count over a measured rate.
  assert result["floor_s"] == max(result["bandwidth_floor_s"], result["compute_floor_s"]) > 0
  assert result["compute_floor_s"] == pytest.approx(
      6 * 2 * result["params"] * 4 / (result["matmul_gflop_per_s"] * 1e9))
  assert result["floor_ratio"] == pytest.approx(result["cached_s"] / result["floor_s"])
  out = capsys.readouterr().out
  assert "KV-cache speed-up" in out and "floor:" in out


def test_uncached_sampler_can_be_skipped_and_the_kernel_layout_chosen(capsys):
  result = ar_sampling.main(TINY + ["--no-uncached", "--kernel-layout", "out_in"])
  assert "uncached_s" not in result and "speedup" not in result and result["cached_s"] > 0
  header = capsys.readouterr().out.splitlines()[0]
  assert "kernel_layout=out_in" in header and f"cpu={ar_sampling.cpu_model()!r}" in header


@pytest.mark.slow
def test_peer_is_hf_llama_of_the_same_dimensions(capsys):
  result = ar_sampling.main(TINY + ["--no-uncached", "--peer"])
  # Ours adds the class embedding (10 classes + the null class) and HF has nothing else different.
  assert result["params"] - result["peer_params"] == 11 * 128
  assert result["peer_s"] > 0 and result["peer_ratio"] == pytest.approx(result["peer_s"] / result["cached_s"])
  assert "HF transformers" in capsys.readouterr().out


@pytest.mark.slow
def test_peer_runs_in_the_benchmark_dtype(capsys):
  """bf16 (the GPU comparison's dtype) on both sides: our weights and the peer's are bf16, so the floor reads
  half the float32 bytes."""
  result = ar_sampling.main(TINY + ["--no-uncached", "--peer", "--dtype", "bfloat16"])
  assert result["peer_s"] > 0 and result["cached_s"] > 0
  assert result["bandwidth_floor_s"] == pytest.approx(6 * result["params"] * 2 / (result["read_gb_per_s"] * 1e9))
  assert "dtype=bfloat16" in capsys.readouterr().out


def test_bad_arguments_are_rejected():
  with pytest.raises(SystemExit):
    ar_sampling.parse_args(["--grid", "16"])
  with pytest.raises(SystemExit):
    ar_sampling.parse_args(["--dtype", "float16"])
  with pytest.raises(SystemExit):
    ar_sampling.parse_args(["--cache-buckets", "0"])
  with pytest.raises(SystemExit):
    ar_sampling.parse_args(["--kernel-layout", "row_major"])
