"""Caps the server enforces and agents respect, in a stdlib-only module so that an agent can
know them without loading pydantic and the API's schemas."""

MAX_LOG_BATCH = 1000  # log lines (and task runs, and subflow runs) in one POST …/events
MAX_LOG_MESSAGE = 64 * 1024  # characters of one log line
MAX_RESULT_CHARS = 64 * 1024  # a flow run's result; a larger one is kept as its repr, cut
MAX_TASK_RESULT_CHARS = 8 * 1024  # a task run's result: a flow may have thousands
