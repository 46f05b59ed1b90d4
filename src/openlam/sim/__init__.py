"""Meta-World multi-view data generation: rendering, segmentation masks, distractors.

MuJoCo picks its GL backend when first imported, so the headless default (EGL) is set here,
before any submodule imports mujoco. Set MUJOCO_GL yourself to override it.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
