"""The names of a run's checkpoint files and folders, and the error a bad checkpoint raises.

Layout of a run directory::

    checkpoints/step-0000100/   model.safetensors, config.json, tokenizer + processor files
                                (save_pretrained: loadable with backbone.path=<this folder>),
                                head.safetensors (value head, if any),
                                training_state.safetensors + training_state.json (optimiser,
                                scheduler, step, sampler position, RNG: tensors and the rest),
                                config.yaml, deepspeed/ (each rank's share, under distributed=zero*),
                                manifest.json (every other file: size and sha256)
    checkpoints/latest          name of the newest checkpoint written (a hint only)
    checkpoints/.step-0000100.* a save in progress, or one a killed process left (removed later)
"""

from __future__ import annotations

import re

from prm.errors import UserError

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MANIFEST = "manifest.json"
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
LEGACY_STATE = "training_state.pt"  # a pickle written by older versions: never loaded
HEAD_FILE = "head.safetensors"
FORMAT = 1  # version of training_state.json and manifest.json
STEP_FOLDER = re.compile(r"^step-(\d+)$")


class CheckpointError(UserError, FileNotFoundError):
    """A checkpoint that is missing, damaged or not of the expected kind; the message names the folder
    and what is wrong (a user error: exit status 2 from the entry points)."""
