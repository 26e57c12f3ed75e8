"""Question wording of the official engine (``src/question_templates.py``) and of the
official evaluation prompts (``lmms_eval/tasks/{vsibench,vstibench}/utils.py``)."""

OBJ_COUNT = "How many {category}(s) are in this room?"
OBJ_SIZE = ("What is the length of the longest dimension (length, width, or height) of the {category}, "
            "measured in centimeters?")
ROOM_SIZE = ("What is the size of this room (in square meters)? \n"
             "If multiple rooms are shown, estimate the size of the combined space.")
OBJ_ABS_DISTANCE = ("Measuring from the closest point of each object, what is the direct distance between the "
                    "{object1} and the {object2} (in meters)?")
_REL_DIST_TAIL = "\nIf there are multiple instances of an object category, measure to the closest."
OBJ_REL_DISTANCE = {
    4: "Measuring from the closest point of each object, which of these objects ({choice_a}, {choice_b}, {choice_c}, "
       "{choice_d}) is the closest to the {category}?" + _REL_DIST_TAIL,
    3: "Measuring from the closest point of each object, which of these objects ({choice_a}, {choice_b}, {choice_c}) "
       "is the closest to the {category}?" + _REL_DIST_TAIL,
    2: "Measuring from the closest point of each object, which of these objects ({choice_a}, {choice_b}) is the "
       "closest to the {category}?" + _REL_DIST_TAIL,
}
OBJ_REL_DIRECTION = {
    1: "If I am standing by the {positioning_object} and facing the {orienting_object}, is the {querying_object} to "
       "my front-left, front-right, back-left, or back-right?\nThe directions refer to the quadrants of a Cartesian "
       "plane (if I am standing at the origin and facing along the positive y-axis).",
    2: "If I am standing by the {positioning_object} and facing the {orienting_object}, is the {querying_object} to "
       "my left, right, or back?\nAn object is to my back if I would have to turn at least 135 degrees in order to "
       "face it.",
    3: "If I am standing by the {positioning_object} and facing the {orienting_object}, is the {querying_object} to "
       "the left or the right of the {orienting_object}?",
}
APPEARANCE_ORDER = ("What will be the first-time appearance order of the following categories in the video: "
                    "{choice_a}, {choice_b}, {choice_c}, {choice_d}?")
ROUTE_PLAN = ("You are a robot beginning at the {start_object} facing the {facing_object}. You want to navigate to "
              "the {destination_object}. You will perform the following actions (Note: for each [please fill in], "
              "choose either 'turn back,' 'turn left,' or 'turn right.'): {actions}")

CAMERA_OBJ_DIST = ("What is the approximate distance (in meters) between the camera (or the person filming) and the "
                   "nearest point of the {object_name} in {frame_description}?")
CAMERA_OBJ_REL_DIST = {
    4: "Measuring from the closest point of each object, which of these objects ({choice_a}, {choice_b}, {choice_c}, "
       "{choice_d}) is the closest to the camera in {frame_description}?",
    3: "Measuring from the closest point of each object, which of these objects ({choice_a}, {choice_b}, {choice_c}) "
       "is the closest to the camera in {frame_description}?",
    2: "Measuring from the closest point of each object, which of these objects ({choice_a}, {choice_b}) is the "
       "closest to the camera in {frame_description}?",
}
OBJ_OBJ_REL_POS = {
    "nf": "In {frame_description}, relative to the camera, is {obj_A_name} [Near/Far] compared to {obj_B_name}?",
    "lr": "In {frame_description}, relative to {obj_B_name}, is {obj_A_name} to the [Left/Right]?",
    "ud": "In {frame_description}, relative to {obj_B_name}, is {obj_A_name} to the [Up/Down]?",
}
_MOVE = ("During the sequence between {start_frame_description} and {end_frame_description}, what was the primary "
         "consistent direction of the camera's movement relative to its orientation at the start? ")
CAMERA_MOVEMENT_DIRECTION = {
    4: _MOVE + "The options are {choice_a}, {choice_b}, {choice_c}, and {choice_d}.",
    3: _MOVE + "The options are {choice_a}, {choice_b}, and {choice_c}.",
    2: _MOVE + "The options are {choice_a} and {choice_b}.",
}
CAMERA_DISPLACEMENT = ("Approximately how far (in meters) did the camera move between {start_frame_description} and "
                       "{end_frame_description}?")

# evaluation prompt pieces (pre-prompt default, post-prompts)
PRE_PROMPT = "These are frames of a video."
NA_POST_PROMPT = "Please answer the question using a single word or phrase."
MCA_POST_PROMPT = "Answer with the option's letter from the given choices directly."
