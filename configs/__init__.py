"""ml-collections ``get_config()`` files. Load with ``--config configs/<name>.py``."""
