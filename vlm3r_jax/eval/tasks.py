"""Question types, task names and table layouts of VSI-Bench and VSTI-Bench.

The type lists are the official ones (``MCA_QUESTION_TYPES`` / ``NA_QUESTION_TYPES`` in
thinking-in-space ``lmms_eval/tasks/vsibench/utils.py`` and VLM-3R's
``thinking-in-space/lmms_eval/tasks/vstibench/utils.py``). Everything else in ``vlm3r_jax.eval``
reads them from here so the prompt builder, the scorer and the report agree.
"""

from __future__ import annotations

BENCHMARKS = ("vsibench", "vstibench")

# --- VSI-Bench (thinking-in-space) -------------------------------------------------------------
VSI_MC_TYPES = (
    "object_rel_direction_easy",
    "object_rel_direction_medium",
    "object_rel_direction_hard",
    "object_rel_distance",
    "route_planning",
    "obj_appearance_order",
)
VSI_NA_TYPES = (
    "object_abs_distance",
    "object_counting",
    "object_size_estimation",
    "room_size_estimation",
)
# The official aggregation folds the three relative-direction difficulties into one task.
VSI_REL_DIRECTION_TYPES = VSI_MC_TYPES[:3]
VSI_REL_DIRECTION_TASK = "object_rel_direction"

# Paper column order (the official aggregate also emits tasks in this order).
VSI_TASKS = (
    "object_counting",
    "object_abs_distance",
    "object_size_estimation",
    "room_size_estimation",
    "object_rel_distance",
    "object_rel_direction",
    "route_planning",
    "obj_appearance_order",
)
VSI_SHORT = {
    "overall": "Avg",
    "object_counting": "ObjCount",
    "object_abs_distance": "AbsDist",
    "object_size_estimation": "ObjSize",
    "room_size_estimation": "RoomSize",
    "object_rel_distance": "RelDist",
    "object_rel_direction": "RelDir",
    "route_planning": "RoutePlan",
    "obj_appearance_order": "ApprOrder",
}

# --- VSTI-Bench (VLM-3R) ----------------------------------------------------------------------
# MC types are scored against the record's ``mc_answer`` (a letter); ``ground_truth`` of these
# records holds the option text.
VSTI_MC_TYPES = (
    "obj_obj_relative_pos_nf",
    "obj_obj_relative_pos_ud",
    "obj_obj_relative_pos_lr",
    "camera_obj_rel_dist_v1",
    "camera_obj_rel_dist_v2",
    "camera_obj_rel_dist_v3",
    "camera_movement_direction",
)
VSTI_NA_TYPES = (
    "camera_obj_abs_dist",
    "camera_displacement",
    "camera_obj_dist_change",
)
# The paper's five task families. The official scorer does NOT group: its overall is the plain
# mean over every question type present. ``camera_obj_dist_change`` is scored by the official code
# but belongs to none of the paper's five families, so it stays outside the 5-group average.
VSTI_GROUPS = {
    "camera_obj_abs_dist": ("camera_obj_abs_dist",),
    "camera_displacement": ("camera_displacement",),
    "camera_movement_direction": ("camera_movement_direction",),
    "obj_obj_relative_pos": ("obj_obj_relative_pos_nf", "obj_obj_relative_pos_ud", "obj_obj_relative_pos_lr"),
    "camera_obj_rel_dist": ("camera_obj_rel_dist_v1", "camera_obj_rel_dist_v2", "camera_obj_rel_dist_v3"),
}
VSTI_SUBTYPES = (
    "camera_obj_abs_dist",
    "camera_displacement",
    "camera_movement_direction",
    "obj_obj_relative_pos_nf",
    "obj_obj_relative_pos_ud",
    "obj_obj_relative_pos_lr",
    "camera_obj_rel_dist_v1",
    "camera_obj_rel_dist_v2",
    "camera_obj_rel_dist_v3",
    "camera_obj_dist_change",
)
VSTI_SHORT = {
    "overall": "Avg(official)",
    "paper_avg": "Avg(5 groups)",
    "group:camera_obj_abs_dist": "CamObjAbsDist",
    "group:camera_displacement": "CamDisp",
    "group:camera_movement_direction": "CamMoveDir",
    "group:obj_obj_relative_pos": "ObjRelPos",
    "group:camera_obj_rel_dist": "CamObjRelDist",
    "camera_obj_abs_dist": "abs_dist",
    "camera_displacement": "disp",
    "camera_movement_direction": "move_dir",
    "obj_obj_relative_pos_nf": "pos_nf",
    "obj_obj_relative_pos_ud": "pos_ud",
    "obj_obj_relative_pos_lr": "pos_lr",
    "camera_obj_rel_dist_v1": "rel_v1",
    "camera_obj_rel_dist_v2": "rel_v2",
    "camera_obj_rel_dist_v3": "rel_v3",
    "camera_obj_dist_change": "dist_change",
}


def mc_types(benchmark: str) -> tuple[str, ...]:
    """Multiple-choice question types of ``benchmark`` ("vsibench" | "vstibench")."""
    return {"vsibench": VSI_MC_TYPES, "vstibench": VSTI_MC_TYPES}[check_benchmark(benchmark)]


def na_types(benchmark: str) -> tuple[str, ...]:
    """Numerical-answer question types of ``benchmark``."""
    return {"vsibench": VSI_NA_TYPES, "vstibench": VSTI_NA_TYPES}[check_benchmark(benchmark)]


def check_benchmark(benchmark: str) -> str:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")
    return benchmark


def is_multiple_choice(question_type: str, benchmark: str) -> bool:
    """True for MC types, False for NA types; ValueError (listing the known types) otherwise,
    as the official scorer raises on an unknown type."""
    if question_type in mc_types(benchmark):
        return True
    if question_type in na_types(benchmark):
        return False
    raise ValueError(
        f"unknown {benchmark} question_type {question_type!r}; known: "
        f"{sorted(mc_types(benchmark) + na_types(benchmark))}"
    )


def task_of(question_type: str, benchmark: str) -> str:
    """The table task a question type is averaged into (VSI folds the three rel-direction types)."""
    is_multiple_choice(question_type, benchmark)  # validates
    if benchmark == "vsibench" and question_type in VSI_REL_DIRECTION_TYPES:
        return VSI_REL_DIRECTION_TASK
    return question_type
