from __future__ import annotations

import numpy as np
import pytest

from streamer.features import EntityWindows


def test_first_events_are_padded_with_the_entitys_first_event() -> None:
    w = EntityWindows(window=4, n_features=2)
    x = np.array([[1, 10], [2, 20]], dtype=np.float32)
    out = w.windows(x, ["a", "a"])
    np.testing.assert_array_equal(out[0], [[1, 10]] * 4)
    np.testing.assert_array_equal(out[1], [[1, 10], [1, 10], [1, 10], [2, 20]])


def test_windows_continue_across_batches_per_entity() -> None:
    w = EntityWindows(window=3, n_features=1)
    w.windows(np.array([[1], [100], [2]], dtype=np.float32), ["a", "b", "a"])
    out = w.windows(np.array([[3], [200]], dtype=np.float32), ["a", "b"])
    np.testing.assert_array_equal(out[:, :, 0], [[1, 2, 3], [100, 100, 200]])


def test_entity_memory_is_bounded_least_recent_first() -> None:
    w = EntityWindows(window=2, n_features=1, max_entities=2)
    for key in ["a", "b", "c"]:
        w.windows(np.array([[1.0]], dtype=np.float32), [key])
    assert len(w) == 2
    # "a" was forgotten: its next window is padded with the new value again
    out = w.windows(np.array([[5.0]], dtype=np.float32), ["a"])
    np.testing.assert_array_equal(out[0, :, 0], [5.0, 5.0])


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="window"):
        EntityWindows(window=1, n_features=1)
    with pytest.raises(ValueError, match="entities"):
        EntityWindows(window=2, n_features=1).windows(np.zeros((2, 1), dtype=np.float32), ["a"])
