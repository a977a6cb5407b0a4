"""VLM families behind one adapter protocol (`VLMAdapter`); `load_vlm(dir)` picks the family from config.json."""

from grpo_ctrl.vlm.adapter import Generation, PhaseModules, VLMAdapter
from grpo_ctrl.vlm.loading import EMBEDDED_DIR, ModelDir, ModelDirError, inspect_model_dir, load_vlm

__all__ = ["EMBEDDED_DIR", "Generation", "ModelDir", "ModelDirError", "PhaseModules", "VLMAdapter",
           "inspect_model_dir", "load_vlm"]
