import pytest
import wandb

from train.utils import tracking


@pytest.mark.parametrize(("logged_in", "mode"), [(True, "online"), (False, "offline")])
def test_mode_follows_login(monkeypatch, tmp_path, logged_in, mode):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(wandb, "login", lambda prompt: logged_in)
    logger = tracking.wandb_logger(project="p", save_dir=str(tmp_path))
    assert logger._wandb_init["mode"] == mode


def test_wandb_mode_variable_and_explicit_mode_win(monkeypatch, tmp_path):
    monkeypatch.setattr(wandb, "login", lambda prompt: pytest.fail("must not ask"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert "mode" not in tracking.wandb_logger(save_dir=str(tmp_path))._wandb_init  # wandb reads WANDB_MODE
    assert tracking.wandb_logger(mode="offline", save_dir=str(tmp_path))._wandb_init["mode"] == "offline"
