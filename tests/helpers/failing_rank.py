"""train.py with rank 1 raising at its first step: a test helper for the no-hang guarantee.

The patch sits at module level so spawned workers (which re-import this main module) get it too.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from grpo_ctrl.trainer import JointGRPOTrainer  # noqa: E402

_original = JointGRPOTrainer.train_step


def _fail_on_rank_1(self, step):
    if os.environ.get("RANK") == "1":
        raise RuntimeError("injected failure on rank 1")
    return _original(self, step)


JointGRPOTrainer.train_step = _fail_on_rank_1

if __name__ == "__main__":
    import train

    sys.argv[1:1] = ["--config-path", str(ROOT / "conf")]
    train.main()
