"""Caps the server enforces and agents respect, in a stdlib-only module so that an agent can
know them without loading pydantic and the API's schemas."""

MAX_LOG_BATCH = 1000  # log lines in one POST /api/flow-runs/{id}/logs
MAX_LOG_MESSAGE = 64 * 1024  # characters of one log line
