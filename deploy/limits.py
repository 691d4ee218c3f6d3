"""Caps the server enforces and agents respect, in a stdlib-only module so that an agent can
know them without loading pydantic and the API's schemas."""

MAX_LOG_BATCH = 1000  # log lines (and task runs, and subflow runs) in one POST …/events
MAX_LOG_MESSAGE = 64 * 1024  # characters of one log line
MAX_RESULT_CHARS = 64 * 1024  # a flow run's result; a larger one is kept as its repr, cut
MAX_TASK_RESULT_CHARS = 8 * 1024  # a task run's result: a flow may have thousands
MAX_BATCH_BYTES = 1024 * 1024  # an agent's event batch stops growing here (one line may pass it)

# Request bodies, checked before they are parsed (bundle uploads have their own cap, a setting).
MAX_REQUEST_BYTES = 1024 * 1024  # any JSON body
MAX_EVENTS_REQUEST_BYTES = 16 * 1024 * 1024  # an event batch: up to MAX_LOG_BATCH long lines
MAX_PARAMETERS_BYTES = 64 * 1024  # a deployment's, schedule's or run's parameters, as JSON
MAX_BIGINT = 2**63 - 1  # the store's BIGINT columns (fencing tokens, log line ids, sizes)
