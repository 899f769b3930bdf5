import pytest

from tokgen_jax.bench import lfq


def test_benchmark_runs_and_reports_positive_times(capsys):
  result = lfq.main(["--bits", "6", "--shape", "2,4,4", "--repeats", "2"])
  assert result["compile_s"] > 0 and 0 < result["min_ms"] <= result["median_ms"] <= result["max_ms"]
  assert "forward+backward: median" in capsys.readouterr().out


def test_bad_shape_is_rejected():
  with pytest.raises(SystemExit):
    lfq.parse_args(["--shape", "8,x"])
