"""Meta-World (v3 tasks, Sawyer arm) set up for data generation: seeded task variation, scripted
expert policies, upright corner cameras, robot geometry for masks, and language instructions."""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

ROBOT = "sawyer"
ROBOT_ROOT_BODY = "base"  # every body of the Sawyer arm hangs under it
ACTION_NAMES = ["dx", "dy", "dz", "gripper"]
STATE_NAMES = ["hand_x", "hand_y", "hand_z", "gripper_distance"]
ACTION_DESCRIPTION = (
    "Meta-World Sawyer: [dx, dy, dz] end-effector position command in [-1, 1] (x action_scale=0.01 m "
    "per control step), gripper effort in [-1, 1] (+1 closes)"
)

INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "put the ring on the peg",
    "basketball-v3": "dunk the basketball into the basket",
    "bin-picking-v3": "move the puck from one bin to the other",
    "box-close-v3": "put the lid on the box",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button from the top behind the wall",
    "button-press-v3": "press the button from the front",
    "button-press-wall-v3": "press the button behind the wall",
    "coffee-button-v3": "push the button on the coffee machine",
    "coffee-pull-v3": "pull the mug out of the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "rotate the dial",
    "disassemble-v3": "pick the ring off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning the lock",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning the lock",
    "hand-insert-v3": "insert the gripper into the hole",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open",
    "faucet-open-v3": "turn the faucet on",
    "faucet-close-v3": "turn the faucet off",
    "hammer-v3": "hammer the nail into the wall",
    "handle-press-side-v3": "press the handle down sideways",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up sideways",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the puck and place it behind the wall",
    "pick-out-of-hole-v3": "pick the puck out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the cabinet",
    "plate-slide-side-v3": "slide the plate sideways into the cabinet",
    "plate-slide-back-v3": "slide the plate out of the cabinet",
    "plate-slide-back-side-v3": "slide the plate sideways out of the cabinet",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "unplug the peg sideways",
    "soccer-v3": "kick the ball into the goal",
    "stick-push-v3": "grasp the stick and push the box with it",
    "stick-pull-v3": "grasp the stick and pull the box with it",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "push-back-v3": "push the puck back to the goal",
    "reach-v3": "reach to the goal position",
    "reach-wall-v3": "reach over the wall to the goal position",
    "shelf-place-v3": "pick up the puck and place it on the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}


def task_names() -> list[str]:
    import metaworld

    return list(metaworld.ALL_V3_ENVIRONMENTS)


def make_policy(task: str) -> Any:
    """The scripted expert for `task` (e.g. pick-place-v3 -> SawyerPickPlaceV3Policy)."""
    from metaworld import policies

    name = "Sawyer" + "".join(p.capitalize() for p in task.split("-")[:-1]) + "V3Policy"
    if not hasattr(policies, name):
        raise KeyError(f"no scripted policy {name} for task {task}")
    return getattr(policies, name)()


def make_env(task: str) -> Any:
    """A Meta-World env whose task variation (object/goal positions) is drawn from its own seeded
    RNG at every reset, with the goal observable (the scripted policies need it)."""
    import metaworld

    if task not in metaworld.ALL_V3_ENVIRONMENTS:
        raise KeyError(f"unknown Meta-World task '{task}'; known: {', '.join(metaworld.ALL_V3_ENVIRONMENTS)}")
    env = metaworld.ALL_V3_ENVIRONMENTS[task]()
    env._partially_observable = False
    del env.sawyer_observation_space  # cached with the goal bounds zeroed; rebuilt goal-visible
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    env._set_task_called = True
    env.max_path_length = 10**9  # the generator enforces its own episode cap
    make_cameras_upright(env.model, env.data)
    return env


def make_cameras_upright(model: mujoco.MjModel, data: mujoco.MjData) -> None:
    """Meta-World's corner cameras have their image 'up' axis pointing at the floor, so frames come
    out upside down. Rotate such cameras 180 degrees about their optical axis (a real camera turned
    the right way up; not a mirror flip)."""
    mujoco.mj_forward(model, data)
    flip = np.array([0.0, 0.0, 0.0, 1.0])  # 180 deg about the camera's own z (optical) axis
    for i in range(model.ncam):
        if model.cam_bodyid[i] != 0:
            continue  # cameras riding on the arm keep their mounting
        up_world = data.cam_xmat[i].reshape(3, 3)[:, 1]
        if up_world[2] < 0:
            q = np.empty(4)
            mujoco.mju_mulQuat(q, model.cam_quat[i], flip)
            model.cam_quat[i] = q
    mujoco.mj_forward(model, data)


def robot_geom_ids(model: mujoco.MjModel) -> np.ndarray:
    """Boolean per geom: does it belong to the robot (any body under the Sawyer base)?"""
    root = model.body(ROBOT_ROOT_BODY).id
    return np.array([model.body_rootid[model.geom_bodyid[g]] == root for g in range(model.ngeom)])
