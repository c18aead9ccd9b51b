"""What the configs in ``conf/`` need before Hydra composes them: the ``repo_root`` resolver.

Kept free of torch and Lightning, so that an entry point's ``--help`` answers at once.
"""

from pathlib import Path

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"

if not OmegaConf.has_resolver("repo_root"):
    OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))
