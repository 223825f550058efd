"""Checkpoints: save_pretrained directories plus training state, written atomically, verified on load.

One concept per module, none holding state between calls:

- :mod:`~prm.checkpoint.layout`: file and folder names of a run's checkpoints, :class:`CheckpointError`;
- :mod:`~prm.checkpoint.codec`: the training state to safetensors + JSON and back (no pickle), RNG states;
- :mod:`~prm.checkpoint.manifest`: ``manifest.json`` (size and sha256 of every file) and verification;
- :mod:`~prm.checkpoint.discovery`: step folders, the newest checkpoint that verifies, path resolution;
- :mod:`~prm.checkpoint.store`: atomic save, pruning, stale temporary folders, the value head file.

Building the model a checkpoint describes is the model's business: :func:`prm.model.build.load_prm`.
"""

from prm.checkpoint.codec import (
    MARKERS,
    decode_state,
    encode_state,
    load_training_state,
    rng_state,
    set_rng_state,
    write_training_state,
)
from prm.checkpoint.discovery import (
    checkpoint_folders,
    checkpoint_step,
    latest_checkpoint,
    resolve_checkpoint,
)
from prm.checkpoint.layout import (
    CHECKPOINTS,
    FORMAT,
    HEAD_FILE,
    LATEST,
    LEGACY_STATE,
    MANIFEST,
    STATE_JSON,
    STATE_TENSORS,
    STEP_FOLDER,
    CheckpointError,
)
from prm.checkpoint.manifest import VerifiedFolders, verify_checkpoint, write_manifest
from prm.checkpoint.store import (
    ASIDE,
    clean_stale,
    find_resume_checkpoint,
    load_head,
    prune,
    save_checkpoint,
)

__all__ = [
    "ASIDE",
    "CHECKPOINTS",
    "FORMAT",
    "HEAD_FILE",
    "LATEST",
    "LEGACY_STATE",
    "MANIFEST",
    "MARKERS",
    "STATE_JSON",
    "STATE_TENSORS",
    "STEP_FOLDER",
    "CheckpointError",
    "VerifiedFolders",
    "checkpoint_folders",
    "checkpoint_step",
    "clean_stale",
    "decode_state",
    "encode_state",
    "find_resume_checkpoint",
    "latest_checkpoint",
    "load_head",
    "load_training_state",
    "prune",
    "resolve_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "verify_checkpoint",
    "write_manifest",
    "write_training_state",
]
