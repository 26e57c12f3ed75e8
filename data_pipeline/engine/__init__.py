"""QA data engine: scene metadata in the official VLM-3R layout -> spatial (VSI-Bench) and
spatio-temporal (VSTI-Bench) question-answer items.

    from data_pipeline import engine
    items = engine.generate_qa(scene_meta, frame_meta, seed=0)

See docs/data_engine.md for the rules of each task.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable

import numpy as np

from data_pipeline.engine import route, vsi, vsti
from data_pipeline.engine.formats import (
    NA_TYPES,
    VSI_EVAL_NAME,
    VSTI_EVAL_NAME,
    doc_to_text,
    is_numeric,
    to_training_record,
    to_vsibench_record,
    to_vstibench_record,
)
from data_pipeline.engine.metadata import MetadataError, Scene, parse
from data_pipeline.engine.options import LetterBalancer
from data_pipeline.engine.vsi import VSIConfig
from data_pipeline.engine.vsti import VSTIConfig

# question_type -> generator; order = output order
VSI_GENERATORS: dict[str, Callable] = {
    "object_counting": vsi.object_counting,
    "object_size_estimation": vsi.object_size_estimation,
    "room_size_estimation": vsi.room_size_estimation,
    "object_abs_distance": vsi.object_abs_distance,
    "object_rel_distance_v1": vsi.object_rel_distance_v1,
    "object_rel_distance_v2": vsi.object_rel_distance_v2,
    "object_rel_distance_v3": vsi.object_rel_distance_v3,
    "object_rel_direction_v1": vsi.object_rel_direction_v1,
    "object_rel_direction_v2": vsi.object_rel_direction_v2,
    "object_rel_direction_v3": vsi.object_rel_direction_v3,
    "route_planning": route.route_planning,
    "obj_appearance_order": vsi.obj_appearance_order,
}
VSTI_GENERATORS: dict[str, Callable] = {
    "camera_obj_abs_dist": vsti.camera_obj_abs_dist,
    "camera_obj_rel_dist_v1": vsti.camera_obj_rel_dist_v1,
    "camera_obj_rel_dist_v2": vsti.camera_obj_rel_dist_v2,
    "camera_obj_rel_dist_v3": vsti.camera_obj_rel_dist_v3,
    "obj_obj_relative_pos_nf": vsti.obj_obj_relative_pos_nf,
    "obj_obj_relative_pos_lr": vsti.obj_obj_relative_pos_lr,
    "obj_obj_relative_pos_ud": vsti.obj_obj_relative_pos_ud,
    "camera_displacement": vsti.camera_displacement,
    "camera_movement_direction_v1": vsti.camera_movement_direction_v1,
    "camera_movement_direction_v2": vsti.camera_movement_direction_v2,
    "camera_movement_direction_v3": vsti.camera_movement_direction_v3,
}
GENERATORS = {**VSI_GENERATORS, **VSTI_GENERATORS}
# tasks that need the frame metadata (per-frame poses / 2D boxes)
NEEDS_FRAMES = frozenset(VSTI_GENERATORS) | {"obj_appearance_order"}
# official per-scene defaults that differ from num_per_task (room size: one per scene)
PER_TASK_DEFAULT = {"room_size_estimation": 1}


def task_rng(seed: int, scene_name: str, question_type: str) -> np.random.Generator:
    """Independent stream per (seed, scene, task): adding a task or a scene never changes the
    items of the others."""
    return np.random.default_rng([int(seed), zlib.crc32(scene_name.encode()), zlib.crc32(question_type.encode())])


def generate_qa(
    scene_meta: dict,
    frame_meta: dict | None,
    seed: int = 0,
    *,
    scene_name: str | None = None,
    tasks: Iterable[str] | None = None,
    num_per_task: int = 6,
    balancer: LetterBalancer | None = None,
    vsi_config: VSIConfig | None = None,
    vsti_config: VSTIConfig | None = None,
) -> list[dict]:
    """One scene's metadata (official layout) -> raw QA items.

    Args:
      scene_meta: the scene's dict (``video_path``, ``dataset``, ``room_size``, ``room_center``,
        ``object_counts``, ``object_bboxes``) or an official file dict ``{scene_id: {...}}``
        holding one scene.
      frame_meta: the scene's frame metadata (``camera_intrinsics``, ``img_width``, ``img_height``,
        ``frames``; optional ``fps``) or None (then only the tasks that need no frames run).
        Appearance order needs an fps (``fps`` key or a known dataset); without one it is
        skipped, or raises MetadataError when asked for explicitly in ``tasks``.
      seed: everything random (candidates, distractors, letters) derives from it.
      tasks: question types to generate (default: all 23 known types).
      num_per_task: items per question type and scene (official ``--num_subsample`` 6;
        room size is always at most 1).
      balancer: share one across scenes to balance answer letters over a dataset.

    Returns: items with ``dataset``, ``scene_name``, ``video_path``, ``question_type``,
    ``question``, ``options`` (["A. ..", ...]), ``ground_truth``, ``mc_answer`` (+ the official
    extra keys, ``frame_indices`` for temporal items).

    Raises: MetadataError naming the scene and the field on malformed metadata.
    """
    scene = parse(scene_meta, frame_meta, scene_name)
    names = list(GENERATORS) if tasks is None else list(tasks)
    unknown = [t for t in names if t not in GENERATORS]
    if unknown:
        raise ValueError(f"unknown question types {unknown}; known: {list(GENERATORS)}")
    bal = balancer if balancer is not None else LetterBalancer()
    vcfg, tcfg = vsi_config or VSIConfig(), vsti_config or VSTIConfig()
    out: list[dict] = []
    for qtype in names:
        if qtype in NEEDS_FRAMES and frame_meta is None:
            continue
        if qtype == "obj_appearance_order" and scene.fps is None:
            if tasks is None:  # default task list: skip rather than fail the whole scene
                continue
            raise MetadataError(f"scene '{scene.name}': field 'fps': dataset '{scene.dataset}' has no known fps; add "
                                "'fps' to the frame metadata to generate obj_appearance_order")
        n = min(num_per_task, PER_TASK_DEFAULT.get(qtype, num_per_task))
        if n <= 0:  # every generator appends before it checks the count
            continue
        cfg = tcfg if qtype in VSTI_GENERATORS else vcfg
        out.extend(GENERATORS[qtype](scene, task_rng(seed, scene.name, qtype), n, bal, cfg))
    return out


__all__ = [
    "GENERATORS", "NA_TYPES", "VSI_EVAL_NAME", "VSI_GENERATORS", "VSTI_EVAL_NAME", "VSTI_GENERATORS",
    "LetterBalancer", "MetadataError", "Scene", "VSIConfig", "VSTIConfig", "doc_to_text", "generate_qa",
    "is_numeric", "parse", "task_rng", "to_training_record", "to_vsibench_record", "to_vstibench_record",
]
