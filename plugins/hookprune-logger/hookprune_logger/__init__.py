"""hookprune-logger: per-layer sparsity, loss terms and learning rates to a CSV file and to TensorBoard.

An auto-loaded hook plugin (entry point group ``hookprune``), so it is registered with every
scheduler and receives no constructor arguments; it is configured by the environment instead, read
when a scheduler fires its first event:

``HOOKPRUNE_LOG_DIR``
    the folder to log into; unset or empty, the logger does nothing.
``HOOKPRUNE_LOG_EVERY``
    also log every N-th minibatch, counted over the run (``epoch * minibatches_per_epoch +
    minibatch_id + 1``); 0, the default, logs at the end of each epoch only.
``HOOKPRUNE_LOG_FORMATS``
    ``csv``, ``tensorboard`` or both, comma-separated; both by default.

Each scheduler logs into its own folder ``LOG_DIR/run-YYYYmmdd-HHMMSS-PID-N/``, made at its first
row: ``scalars.csv`` and a TensorBoard event file hold the same rows. Under ``torch.distributed``
only rank 0 logs.
"""

from hookprune_logger.logger import (
    CSV_COLUMNS,
    CSV_NAME,
    ENV_DIR,
    ENV_EVERY,
    ENV_FORMATS,
    FORMATS,
    Config,
    Run,
    ScalarLogger,
    close,
    plugin,
)

__all__ = [
    "CSV_COLUMNS",
    "CSV_NAME",
    "ENV_DIR",
    "ENV_EVERY",
    "ENV_FORMATS",
    "FORMATS",
    "Config",
    "Run",
    "ScalarLogger",
    "close",
    "plugin",
]
__version__ = "0.1.0"
