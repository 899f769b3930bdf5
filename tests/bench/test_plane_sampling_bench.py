import pytest

from tokgen_jax.bench import plane_sampling


@pytest.mark.slow  # six compilations; keeps the quick loop under 8 minutes
def test_benchmark_times_all_three_latents_against_the_volumetric_one(capsys):
  results = plane_sampling.main(["--grid", "3,4,4", "--channels", "2", "--width", "16", "--depth", "2", "--heads",
                                 "2", "--batch", "1", "--steps", "2", "--repeats", "1", "--window", "2"])
  assert {latent: result["tokens"] for latent, result in results.items()} == {
      "volumetric": 48, "four_plane": 16 + 16 + 12 + 12, "tri_plane": 16 + 12 + 12}
  for result in results.values():
    assert result["sample_s"] > 0 and result["train_step_s"] > 0 and result["sample_speedup"] > 0
    assert result["train_flops"] > 0
  # the same plane model over fewer tokens: fewer FLOPs in XLA's count
  assert results["four_plane"]["train_flops"] > results["tri_plane"]["train_flops"]
  assert results["volumetric"]["sample_speedup"] == 1.0
  assert "volumetric speed" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--grid", "16,16"], ["--grid", "5,6,16"], ["--latents", "planes"],
                                  ["--width", "10", "--heads", "4"], ["--window", "3"]])
def test_bad_arguments_are_rejected(argv):
  with pytest.raises(SystemExit):
    plane_sampling.parse_args(argv)


def test_the_default_window_is_the_whole_latent():
  assert plane_sampling.parse_args([]).window == 16
  assert plane_sampling.parse_args(["--grid", "5,8,8"]).window == 8
  assert plane_sampling.parse_args(["--window", "8"]).window == 8
