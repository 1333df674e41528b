"""Text classification data: IMDB reviews as padded token sequences for a recurrent classifier.

The seed's second experiment (Hlav 2019) classifies sentiment with an LSTM on rt-polarity with
GloVe vectors; neither is obtainable here, so the codebase supports TFDS's `imdb_reviews` (Maas
et al. 2011: 25000 train and 25000 test movie reviews, labels 0 negative / 1 positive) with an
embedding learned from scratch. Pipeline, in numpy outside the compiled program:

  text --tokenize--> words --vocabulary of the training split--> ids --pad/truncate--> (N, T)

Ids: 0 is padding, 1 an out-of-vocabulary word, 2.. the `vocab_size - 2` most frequent training
words (ties broken alphabetically, so the vocabulary is a pure function of the training texts).
Like Keras's `pad_sequences` defaults, sequences are padded and truncated at the front, so the
last step of the recurrence always reads the end of the review.

Reading goes through `tfds.data_source` (no TensorFlow needed to read a prepared dataset;
preparing it after download needs `tensorflow-cpu` and a network, as for the image datasets).
"""
import collections
import re
from typing import Optional, Sequence

import numpy as np

from isometry.data import images

NAMES = ("imdb_reviews",)
NUM_CLASSES = {"imdb_reviews": 2}
PAD, OOV = 0, 1
_WORD = re.compile(r"[a-z0-9']+")
_HTML_BREAK = re.compile(r"<br\s*/?>")


def tokenize(text: str) -> list:
  """Lower-cased words: runs of [a-z0-9'], with IMDB's <br /> line breaks removed."""
  return _WORD.findall(_HTML_BREAK.sub(" ", text.lower()))


def build_vocabulary(token_lists: Sequence[list], vocab_size: int) -> dict:
  """word -> id in [2, vocab_size) for the vocab_size - 2 most frequent words (ties: a-z)."""
  if vocab_size < 3:
    raise ValueError(f"vocab_size must be >= 3 (padding, out-of-vocabulary, one word), got "
                     f"{vocab_size}")
  counts = collections.Counter(word for tokens in token_lists for word in tokens)
  ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:vocab_size - 2]
  return {word: i + 2 for i, (word, _) in enumerate(ranked)}


def encode(token_lists: Sequence[list], vocabulary: dict, max_len: int) -> np.ndarray:
  """(N, max_len) int32 ids, padded with 0 and truncated at the front (the end is kept)."""
  if max_len < 1:
    raise ValueError(f"max_len must be >= 1, got {max_len}")
  out = np.full((len(token_lists), max_len), PAD, np.int32)
  for i, tokens in enumerate(token_lists):
    ids = [vocabulary.get(word, OOV) for word in tokens[-max_len:]]
    if ids:
      out[i, max_len - len(ids):] = ids
  return out


def _read_split(source) -> tuple:
  # Item by item: tfds.testing.mock_data's batched __getitems__ is broken in tfds 4.9.10.
  texts, labels = [], []
  for example in source:
    text = example["text"]
    texts.append(text.decode("utf-8") if isinstance(text, bytes) else str(text))
    labels.append(int(example["label"]))
  if not texts:
    raise images.DataUnavailableError("the TFDS split is empty")
  return texts, np.asarray(labels, np.int32)


def _unavailable_message(name: str, data_dir: Optional[str], reason: str) -> str:
  where = f"data_dir={data_dir!r}" if data_dir else "the default TFDS directory"
  return (f"dataset {name!r} is not available from {where}: {reason}. To fix: install "
          f"tensorflow-cpu (pip install 'isometry[data]') and run once on a connected machine "
          f"with data_dir unset, so TFDS downloads and prepares {name!r}; the prepared directory "
          f"is then readable offline.")


def load_text_dataset(name: str = "imdb_reviews", data_dir: Optional[str] = None,
                      vocab_size: int = 10000, max_len: int = 256, val_size: float = 5000,
                      split_seed: Optional[int] = 0,
                      download: Optional[bool] = None) -> images.Dataset:
  """A text dataset as padded token ids with a validation split.

  Args:
    name: one of NAMES.
    data_dir: a TFDS data directory (None: TFDS's default).
    vocab_size: ids per token, padding and out-of-vocabulary included.
    max_len: sequence length T.
    val_size: fraction or number of the training examples moved to validation (before the
      vocabulary is built, so it comes from the remaining training texts only).
    split_seed: seed of the random validation subset (None: the last val_size examples).
    download: let TFDS download and prepare; default True when data_dir is None.

  Returns:
    `isometry.data.Dataset` whose *_x are (N, max_len) int32 ids and *_y int32 labels.

  Raises:
    ValueError: bad arguments.
    DataUnavailableError: the data cannot be read or prepared here (the message says what to do).
  """
  if name not in NAMES:
    raise ValueError(f"unknown text dataset {name!r}; choose one of {', '.join(NAMES)}")
  if download is None:
    download = data_dir is None
  unavailable = lambda reason: _unavailable_message(name, data_dir, reason)
  train, test = images.tfds_splits(name, data_dir, download, unavailable)
  try:
    train_texts, train_y = _read_split(train)
    test_texts, test_y = _read_split(test)
  except images.DataUnavailableError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise images.DataUnavailableError(
        unavailable(f"TFDS failed with {type(e).__name__}: {e}")) from e
  train_texts, train_y, val_texts, val_y = images.split_validation(
      np.asarray(train_texts, dtype=object), train_y, val_size, split_seed)
  train_tokens = [tokenize(t) for t in train_texts]
  vocabulary = build_vocabulary(train_tokens, vocab_size)
  ids = lambda token_lists: encode(token_lists, vocabulary, max_len)
  return images.Dataset(ids(train_tokens), train_y, ids([tokenize(t) for t in val_texts]), val_y,
                      ids([tokenize(t) for t in test_texts]), test_y)
