"""Output formats: LLaVA-style training records and VSI-Bench / VSTI-Bench evaluation records.

The prompt text is exactly what the official evaluation feeds the model
(``vsibench_doc_to_text``): pre-prompt, question, then the numeric post-prompt, or the
options block and the multiple-choice post-prompt. Training records put ``<image>\\n`` in
front (the official ``format_qa.py``); the answer is the option letter (MC) or the number.
"""

from __future__ import annotations

import hashlib
import json
import uuid

from data_pipeline.engine import templates as T

NA_TYPES = frozenset({
    "object_counting", "object_size_estimation", "room_size_estimation", "object_abs_distance",
    "camera_obj_abs_dist", "camera_displacement", "camera_obj_dist_change",
})

# training question_type -> benchmark question_type (None: not part of that benchmark)
VSI_EVAL_NAME = {
    "object_counting": "object_counting",
    "object_size_estimation": "object_size_estimation",
    "room_size_estimation": "room_size_estimation",
    "object_abs_distance": "object_abs_distance",
    "object_rel_distance_v1": "object_rel_distance",  # the benchmark's rel. distance has 4 options
    "object_rel_direction_v1": "object_rel_direction_hard",  # quadrants
    "object_rel_direction_v2": "object_rel_direction_medium",  # left / right / back
    "object_rel_direction_v3": "object_rel_direction_easy",  # left / right
    "route_planning": "route_planning",
    "obj_appearance_order": "obj_appearance_order",
}
VSTI_EVAL_NAME = {
    "camera_obj_abs_dist": "camera_obj_abs_dist",
    "camera_obj_rel_dist_v1": "camera_obj_rel_dist_v1",
    "camera_obj_rel_dist_v2": "camera_obj_rel_dist_v2",
    "camera_obj_rel_dist_v3": "camera_obj_rel_dist_v3",
    "obj_obj_relative_pos_nf": "obj_obj_relative_pos_nf",
    "obj_obj_relative_pos_lr": "obj_obj_relative_pos_lr",
    "obj_obj_relative_pos_ud": "obj_obj_relative_pos_ud",
    "camera_displacement": "camera_displacement",
    "camera_movement_direction_v1": "camera_movement_direction",  # the eval lists one name for all
    "camera_movement_direction_v2": "camera_movement_direction",
    "camera_movement_direction_v3": "camera_movement_direction",
}


def is_numeric(question_type: str) -> bool:
    return question_type in NA_TYPES


def doc_to_text(item: dict, pre_prompt: str = T.PRE_PROMPT, na_post_prompt: str = T.NA_POST_PROMPT,
                mca_post_prompt: str = T.MCA_POST_PROMPT) -> str:
    """The user text of one question, worded as the official evaluation words it."""
    if is_numeric(item["question_type"]):
        return pre_prompt + "\n" + item["question"] + "\n" + na_post_prompt
    options = "Options:\n" + "\n".join(item["options"])
    return "\n".join([pre_prompt, item["question"], options, mca_post_prompt])


def answer_text(item: dict) -> str:
    """The gpt turn: the letter for multiple choice, the number as a string otherwise."""
    return str(item["ground_truth"]) if is_numeric(item["question_type"]) else str(item["mc_answer"])


def stable_id(item: dict) -> str:
    """A uuid derived from the item's content (the official engine uses uuid4; ours must be
    reproducible)."""
    h = hashlib.sha1(json.dumps(item, sort_keys=True, default=str).encode()).digest()
    return str(uuid.UUID(bytes=h[:16], version=5))


def to_training_record(item: dict) -> dict:
    """Raw QA item -> LLaVA-style record (``format_qa.gen_conversation`` layout)."""
    return {
        "id": stable_id(item),
        "data_source": item["dataset"],
        "scene_name": item["scene_name"],
        "question_type": item["question_type"],
        "video": item["video_path"],
        "conversations": [
            {"from": "human", "value": "<image>\n" + doc_to_text(item)},
            {"from": "gpt", "value": answer_text(item)},
        ],
    }


def to_vsibench_record(item: dict, idx: int) -> dict | None:
    """Raw item -> VSI-Bench test record (None for types the benchmark does not have).

    Layout of ``nyu-visionx/VSI-Bench``: MC ``ground_truth`` is the letter, NA options are
    None, ground truths are strings; the video is ``<root>/<dataset>/<scene_name>.mp4``.
    """
    name = VSI_EVAL_NAME.get(item["question_type"])
    if name is None:
        return None
    na = is_numeric(item["question_type"])
    return {
        "id": idx,
        "dataset": item["dataset"],
        "scene_name": item["scene_name"],
        "question_type": name,
        "question": item["question"],
        "options": None if na else list(item["options"]),
        "ground_truth": str(item["ground_truth"]) if na else str(item["mc_answer"]),
    }


def to_vstibench_record(item: dict, idx: int) -> dict | None:
    """Raw item -> VSTI-Bench test record (video at ``<root>/<video_path>``; MC scored against
    ``mc_answer``)."""
    name = VSTI_EVAL_NAME.get(item["question_type"])
    if name is None:
        return None
    return {
        "id": idx,
        "dataset": item["dataset"],
        "scene_name": item["scene_name"],
        "video_path": item["video_path"],
        "question_type": name,
        "question": item["question"],
        "options": list(item["options"]),
        "ground_truth": item["ground_truth"],
        "mc_answer": item["mc_answer"],
        "frame_indices": list(item.get("frame_indices", [])),
    }
