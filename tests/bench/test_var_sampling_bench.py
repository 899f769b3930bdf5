import pytest

from tokgen_jax.bench import var_sampling


@pytest.mark.slow  # two sampler compilations (VAR's seven scales unrolled)
def test_benchmark_times_var_and_raster_ar_in_one_run(capsys):
  result = var_sampling.main(["--width", "32", "--layers", "1", "--heads", "2", "--vocab", "16", "--vae-dim", "4",
                              "--batch", "2", "--repeats", "1"])
  assert (result["var_tokens"], result["var_steps"], result["ar_tokens"]) == (155, 7, 64)
  assert result["var_s"] > 0 and result["ar_s"] > 0 and result["speedup"] > 0
  assert "raster AR / VAR time per image" in capsys.readouterr().out


def test_bad_sizes_are_rejected():
  with pytest.raises(SystemExit):
    var_sampling.parse_args(["--batch", "0"])
