"""Text pipeline: tokenization, vocabulary, padding against hand-worked examples; IMDB via mock."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from isometry.data import text


def test_tokenize_lowercases_and_drops_html_breaks():
  assert text.tokenize("A <br />great<br/>film, isn't it? 10/10") == [
      "a", "great", "film", "isn't", "it", "10", "10"]


def test_vocabulary_ranks_by_count_then_alphabet():
  tokens = [["b", "a", "c", "a"], ["c", "b", "d"], ["a"]]
  # Counts: a 3, b 2, c 2, d 1; b before c on the tie; ids start at 2 (0 pad, 1 unknown).
  assert text.build_vocabulary(tokens, 5) == {"a": 2, "b": 3, "c": 4}
  with pytest.raises(ValueError, match="vocab_size"):
    text.build_vocabulary(tokens, 2)


def test_encode_pads_and_truncates_at_the_front():
  vocabulary = {"a": 2, "b": 3}
  ids = text.encode([["a", "b"], ["b", "x", "a", "b", "a"], []], vocabulary, max_len=4)
  np.testing.assert_array_equal(ids, [[0, 0, 2, 3], [1, 2, 3, 2], [0, 0, 0, 0]])
  assert ids.dtype == np.int32


def test_imdb_on_mock_data():
  with tfds.testing.mock_data(num_examples=12):
    dataset = text.load_text_dataset("imdb_reviews", vocab_size=20, max_len=7, val_size=4)
  assert dataset.train_x.shape == (8, 7) and dataset.val_x.shape == (4, 7)
  assert dataset.test_x.shape == (12, 7)
  for x in (dataset.train_x, dataset.val_x, dataset.test_x):
    assert x.dtype == np.int32 and 0 <= x.min() and x.max() < 20
  assert set(np.unique(dataset.train_y)) <= {0, 1}
  with pytest.raises(ValueError, match="text dataset"):
    text.load_text_dataset("rt_polarity")
