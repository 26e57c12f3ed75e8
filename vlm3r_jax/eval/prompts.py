"""Question text of a benchmark record, exactly as the official lmms-eval task builds it
(``vsibench_doc_to_text`` in thinking-in-space and in VLM-3R's vstibench copy). The VLM-3R
training data uses the same text, so the data engine and the Grain pipeline reuse
:func:`build_question`.

    NA:  "<pre>\\n<question>\\n<na_post>"
    MC:  "<pre>\\n<question>\\nOptions:\\n<opt 1>\\n...\\n<opt k>\\n<mc_post>"

Options are used as stored in the record (already "A. xxx"). An empty override falls back to the
default, as upstream's ``kwargs.get(..., "") or default`` does. The chat template and the
``<image>`` line are the model's business, not this module's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vlm3r_jax.eval import tasks

PRE_PROMPT = "These are frames of a video."
MC_POST_PROMPT = "Answer with the option's letter from the given choices directly."
NA_POST_PROMPT = "Please answer the question using a single word or phrase."


def build_question(
    record: Mapping[str, Any],
    benchmark: str = "vsibench",
    pre_prompt: str | None = None,
    mc_post_prompt: str | None = None,
    na_post_prompt: str | None = None,
    multiple_choice: bool | None = None,
) -> str:
    """The official user text for ``record`` (fields ``question``, ``question_type``, ``options``).

    ``multiple_choice`` overrides the type lookup (for question types outside the benchmark's
    official lists, e.g. training-only types); by default an unknown type raises ValueError.
    """
    for key in ("question",) + (("question_type",) if multiple_choice is None else ()):
        if key not in record:
            raise ValueError(f"record {record.get('id')!r} has no {key!r} field, needed to build the prompt")
    if multiple_choice is None:
        multiple_choice = tasks.is_multiple_choice(record["question_type"], benchmark)
    pre = pre_prompt or PRE_PROMPT
    if not multiple_choice:
        return pre + "\n" + record["question"] + "\n" + (na_post_prompt or NA_POST_PROMPT)
    options = record.get("options")
    if not isinstance(options, (list, tuple)) or not all(isinstance(o, str) for o in options):
        raise ValueError(
            f"record {record.get('id')!r} ({record.get('question_type')}) is multiple choice but its 'options' "
            f"is {options!r}; expected a list of strings like ['A. chair', 'B. table']"
        )
    return "\n".join([pre, record["question"], "Options:\n" + "\n".join(options), mc_post_prompt or MC_POST_PROMPT])


def option_letters(record: Mapping[str, Any]) -> list[str]:
    """Letters of the record's options ("A. chair" -> "A"); falls back to A, B, C, ... by position."""
    letters = []
    for i, opt in enumerate(record.get("options") or []):
        head = str(opt).split(".", 1)[0].strip()
        letters.append(head if len(head) == 1 and head.isalpha() else chr(ord("A") + i))
    return letters
