import pytest

from train import bench


@pytest.mark.slow
def test_bench_prints_teacher_and_student_side_by_side(tmp_path, capsys):
    bench.main(
        [
            "--seconds", "0.2", "--repeats", "1", "--chunk-frames", "2", "5", "--train-steps", "2",
            "--train-config", "experiment=tiny", "~teacher", "module.target_weights={teacher:0,audio:1}",
            f"paths.log_dir={tmp_path}", "--train-compare", "module.freeze_discriminators=false",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    # folded weight norm: 20,821,295 stored parameters run as 20,806,557
    assert "| teacher (HiFT) | 20,806,557 | 83,250,396 |" in out
    assert "| student (Vocos) | 13,919,618 | 55,694,168 |" in out
    assert "first 2 frames, ms | first 5 frames, ms |" in out
    assert "student (Vocos): faster " in out and "x on cpu 1 thread" in out and "x smaller" in out
    assert "| real data pipeline |" in out and "| in-memory tensors |" in out
    assert "real data vs in-memory step time:" in out
    assert "| in-memory, module.freeze_discriminators=false |" in out


@pytest.mark.slow
def test_prepare_throughput_rows_for_one_and_two_processes(monkeypatch, tmp_path):
    """The rows come from the runs' own prepare_rank*.json (tiny data, small teacher: seconds)."""
    from helpers import small_config, write_clips

    from train.data import prepare as preparation
    from train.s3gen.hift import HiFTGenerator

    clips = write_clips(tmp_path / "clips", count=4)
    monkeypatch.setattr(preparation, "HiFTGenerator", lambda: HiFTGenerator(**small_config()))
    rows = preparation.prepare_throughput([1, 2], [f"data.audio_dirs=[{clips}]"])
    assert [r["processes"] for r in rows] == [1, 2]
    assert all(r["audio_s"] == pytest.approx(4 * 0.6, abs=0.05) and r["audio_s_per_s"] > 0 for r in rows)
