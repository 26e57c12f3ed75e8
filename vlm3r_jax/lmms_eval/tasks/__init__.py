"""No tasks of our own. It exists because lmms-eval's command line, when ``LMMS_EVAL_PLUGINS`` is
set, adds the folder of ``<plugin>.tasks`` to its task paths and fails when there is none."""
