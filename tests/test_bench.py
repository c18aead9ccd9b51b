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


def test_the_conditional_decoder_table_times_hift_and_the_student_side_by_side():
    """``train/bench.py --conditional-decoder``'s rows, on small flows and a short utterance."""
    from train.benchmarks.decoder_figures import decoder_rows
    from vocos_distill.timing import threads

    with threads(1):
        rows = decoder_rows(families=("turbo",), reference_s=(0.4, 0.8), speech_s=0.6, flow_width=64)
    assert [r["decoder"] for r in rows] == ["HiFT (flow ONNX + HiFT PyTorch)", "student fp32", "student int8"]
    for row in rows:
        assert row["family"] == "turbo" and row["steps"] == 2 and row["file_mb"] > 1
        assert row["ref_0.4s"] > 0 and row["ref_0.8s"] > 0 and row["session_s"] > 0
        hift = rows[0]
        assert row["faster_0.4s"] == pytest.approx(1 - row["ref_0.4s"] / hift["ref_0.4s"])
    assert rows[0]["faster_0.4s"] == 0
