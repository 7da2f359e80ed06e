"""Data layer: readers for raw formats, preprocessing, the ``Dataset`` objects, batching.

Typical use::

    from pocketrec.data import load_dataset, load_interactions
    ds = load_dataset("diginetica")        # or "ml-100k", or a path to a CSV / .inter / session folder
    cf = load_interactions("ml-100k")      # user x item matrices for collaborative filtering
"""

from pocketrec.data.dataset import Dataset, SequenceSplit, Vocabulary
from pocketrec.data.errors import DataError
from pocketrec.data.interactions import InteractionDataset, split_interactions, split_train_test
from pocketrec.data.preprocess import (
    build_vocabulary,
    encode_sequences,
    filter_min_rating,
    group_by_user_chronological,
    k_core,
    leave_one_out_split,
    session_split,
)
from pocketrec.data.readers import (
    Interactions,
    read_interactions,
    read_item_titles,
    read_session_lines,
    read_session_log,
    read_user_item_lines,
    read_user_sequences,
)
from pocketrec.data.registry import (
    DatasetInfo,
    available_datasets,
    dataset_names,
    load_dataset,
    load_interactions,
    sniff_format,
)

__all__ = [
    "DataError",
    "Dataset",
    "DatasetInfo",
    "InteractionDataset",
    "Interactions",
    "SequenceSplit",
    "Vocabulary",
    "available_datasets",
    "build_vocabulary",
    "dataset_names",
    "encode_sequences",
    "filter_min_rating",
    "group_by_user_chronological",
    "k_core",
    "leave_one_out_split",
    "load_dataset",
    "load_interactions",
    "read_interactions",
    "read_item_titles",
    "read_session_lines",
    "read_session_log",
    "read_user_item_lines",
    "read_user_sequences",
    "session_split",
    "sniff_format",
    "split_interactions",
    "split_train_test",
]
