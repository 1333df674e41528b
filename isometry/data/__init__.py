"""Data: image classification sets as numpy arrays (`images`: IDX files offline, TFDS online,
validation splits, sequence views, shuffled epochs) and token sequences of text (`text`).

The image API is re-exported here (`isometry.data.load_dataset`, ...); text lives in
`isometry.data.text`. This part imports nothing else of the package.
"""
from isometry.data.images import (DOWNLOAD_PROBE, DOWNLOAD_PROBE_TIMEOUT, IDX_FILES, NAMES,
                                  OFFLINE_DIRS, TASKS, Dataset, DataUnavailableError,
                                  can_download, epoch_batches, load_dataset, pixel_permutation,
                                  read_idx, resolve_data_dir, sequence_view, split_validation,
                                  synthetic_dataset, tfds_splits, validation_count, write_idx)

__all__ = ["DOWNLOAD_PROBE", "DOWNLOAD_PROBE_TIMEOUT", "IDX_FILES", "NAMES", "OFFLINE_DIRS",
           "TASKS", "Dataset", "DataUnavailableError", "can_download", "epoch_batches",
           "load_dataset", "pixel_permutation", "read_idx", "resolve_data_dir", "sequence_view",
           "split_validation", "synthetic_dataset", "tfds_splits", "validation_count",
           "write_idx"]
