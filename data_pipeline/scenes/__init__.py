"""Procedural indoor scenes with exact ground truth (the built-in default dataset).

``generate_scene(SceneSpec(index, seed), out_dir)`` makes a room (:mod:`.room`), a hand-held
walk-through (:mod:`.camera`), renders RGB / z-depth / instance masks with a numpy ray caster
(:mod:`.render`) and writes the official VLM-3R scene + frame metadata, an mp4 and per-frame
``.npz`` (:mod:`.writer`).
"""

from data_pipeline.scenes.camera import look_rotation, make_pose, walkthrough
from data_pipeline.scenes.render import Intrinsics, Renderer, bboxes_2d
from data_pipeline.scenes.room import Room, SceneObject, generate_room
from data_pipeline.scenes.writer import SceneSpec, generate_scene, render_scene, write_mp4

__all__ = [
    "Intrinsics", "Renderer", "Room", "SceneObject", "SceneSpec", "bboxes_2d", "generate_room",
    "generate_scene", "look_rotation", "make_pose", "render_scene", "walkthrough", "write_mp4",
]
