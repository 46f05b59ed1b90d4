"""Facts of the LeRobot v3.0 on-disk layout that the reader and writer share.

Layout: meta/info.json, meta/tasks.parquet, meta/episodes/chunk-XXX/file-YYY.parquet,
data/chunk-XXX/file-YYY.parquet (one row per frame; video features are not columns),
videos/<feature>/chunk-XXX/file-YYY.mp4 (many episodes per file; an episode is located by
videos/<feature>/from_timestamp in the episodes table). openlam's own extras (action-space
semantics, per-episode metadata, splits, generator config) live in meta/openlam.json, which
LeRobot ignores.
"""

from __future__ import annotations

import json

import pyarrow as pa

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
IMAGE_PREFIX = "observation.images."
MASK_PREFIX = "observation.masks."
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
OPENLAM_META = "meta/openlam.json"


def image_key(camera: str) -> str:
    return IMAGE_PREFIX + camera


def mask_key(camera: str) -> str:
    return MASK_PREFIX + camera


def camera_of(key: str) -> str:
    """observation.images.front -> front; observation.image -> image."""
    if key.startswith(IMAGE_PREFIX):
        return key[len(IMAGE_PREFIX) :]
    if key.startswith(MASK_PREFIX):
        return key[len(MASK_PREFIX) :]
    return key.split(".")[-1]


def tasks_table(tasks: list[str]) -> pa.Table:
    """tasks.parquet as pandas writes it: the task string is the index named "task"."""
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}
        ],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
