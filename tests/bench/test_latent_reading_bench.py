import pytest

from tokgen_jax.bench import latent_reading


@pytest.mark.slow  # starts four reader processes
def test_benchmark_reads_every_batch_of_both_splits_and_reports_memory(capsys):
  result = latent_reading.main(["--examples", "300", "--scale", "2", "--shard-size", "100", "--batch", "50"])
  assert result["small"]["distinct_read"] == 300 and result["large"]["distinct_read"] == 600
  for row in result.values():
    assert row["peak_rss_mib"] > 0 and row["open_only_peak_rss_mib"] > 0 and row["examples_per_s"] > 0
  assert "2x the data" in capsys.readouterr().out
