"""``python train/curve.py``: a run's held-out learning curve beside the Griffin-Lim floor."""

import subprocess
import sys

import pytest
from helpers import REPO

from train.evaluation.curve import read_curve
from train.evaluation.metrics import DB_PER_NEPER

# as Lightning's CSVLogger writes it: training rows and validation rows share the columns
CSV = """epoch,step,train/loss_g,val/floor_mel_distance,val/floor_pesq_wb,val/mel_distance,val/minutes,val/pesq_wb
0,0,,0.135,2.25,1.95,,1.07
0,49,60.1,,,,,
0,1999,,0.135,2.25,0.60,3.1,1.64
1,3999,,0.135,2.25,0.40,6.0,2.31
"""


@pytest.fixture
def run(tmp_path):
    folder = tmp_path / "run" / "csv" / "version_0"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text(CSV)
    return tmp_path / "run"


def test_the_curve_has_a_row_per_validation_in_db(run):
    rows = read_curve(run)
    assert [r["step"] for r in rows] == [0, 1999, 3999]
    assert rows[1]["mel_distance_db"] == pytest.approx(0.60 * DB_PER_NEPER)
    assert rows[2]["floor_pesq_wb"] == 2.25 and rows[2]["minutes"] == 6.0 and "minutes" not in rows[0]


@pytest.mark.slow
def test_the_script_prints_the_table_and_draws_the_figure(run, tmp_path):
    done = subprocess.run([sys.executable, "-m", "train.curve", str(run)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "| 3999 | 6.0 | 2.31 | 3.47 | 2.25 | 1.17 |" in done.stdout
    assert (run / "learning_curve.png").stat().st_size > 10_000
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run([sys.executable, "-m", "train.curve", str(empty)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "no metrics.csv under it" in done.stderr
