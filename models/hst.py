"""Half-Space Trees on arrays: river's ``HalfSpaceTrees``, the same trees and scores, a batch at a time.

River scores and learns one event at a time in Python (about 100 us an event for ten trees of height 8
over a 32-value window). :class:`HalfSpaceForest` holds the same trees as arrays (a complete binary
tree per row of ``feature`` and ``threshold``, in heap order: node ``i`` has children ``2i + 1`` and
``2i + 2``) and walks every row of a batch down every tree at once. Scoring is prequential, as river's
``score_one`` then ``learn_one`` for each event in turn: a score reads only the reference masses
(``r_mass``), which change only when ``window_size`` events have been learnt, so a batch is cut at
those points and each part is scored, then learnt, in one step. ``tests/models/test_hst.py`` checks
the scores against river's, event by event, to the last bit.

The trees are built by river itself (``from_river``: its random splits, from its seed); after that
nothing here needs river, and the state is a few arrays that a checkpoint can hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from river.anomaly import HalfSpaceTrees

from models.windowed import WindowedScorer, split_holdout, version_of

__all__ = ["HalfSpaceForest", "HalfSpaceTreesScorer"]

# Bounds on a forest read from a file: scoring walks (height + 1) x rows x trees nodes at once.
MAX_TREES = 64
MAX_HEIGHT = 12


class HalfSpaceForest:
    """``n_trees`` half-space trees of ``height``, masses counted over windows of ``window_size``."""

    def __init__(
        self,
        feature: np.ndarray,
        threshold: np.ndarray,
        l_mass: np.ndarray,
        r_mass: np.ndarray,
        *,
        window_size: int,
        counter: int = 0,
        first_window: bool = True,
    ) -> None:
        feature = np.asarray(feature, dtype=np.int64)
        threshold = np.asarray(threshold, dtype=np.float64)
        l_mass = np.asarray(l_mass, dtype=np.int64)
        r_mass = np.asarray(r_mass, dtype=np.int64)
        if feature.ndim != 2 or threshold.shape != feature.shape:
            raise ValueError("feature and threshold must be (n_trees, internal nodes) alike")
        n_trees, internal = feature.shape
        height = int(np.log2(internal + 1))
        if (
            not 1 <= n_trees <= MAX_TREES
            or internal != 2**height - 1
            or not 1 <= height <= MAX_HEIGHT
        ):
            raise ValueError(
                f"{n_trees} trees of {internal} internal nodes: at most {MAX_TREES} complete "
                f"binary trees of height 1 to {MAX_HEIGHT}"
            )
        nodes = 2 ** (height + 1) - 1
        if l_mass.shape != (n_trees, nodes) or r_mass.shape != (n_trees, nodes):
            raise ValueError(f"masses must be ({n_trees}, {nodes})")
        if window_size < 1 or not 0 <= counter < window_size:
            raise ValueError("window_size must be >= 1 and counter in [0, window_size)")
        if (feature < 0).any() or (l_mass < 0).any() or (r_mass < 0).any():
            raise ValueError("features and masses must not be negative")
        if not np.isfinite(threshold).all():
            raise ValueError("thresholds must be finite")
        self.feature, self.threshold = feature, threshold
        self.l_mass, self.r_mass = l_mass.copy(), r_mass.copy()
        self.n_trees, self.height, self.window_size = n_trees, height, window_size
        self.counter, self.first_window = counter, first_window
        self.n_features = int(feature.max()) + 1
        self._trees = np.arange(n_trees)[None, :]
        # river's normalisation: the largest score the trees could sum
        self.max_score = n_trees * window_size * (2 ** (height + 1) - 1)

    @classmethod
    def from_river(cls, model: object, names: list[str]) -> HalfSpaceForest:
        """The trees (and masses) of a river ``HalfSpaceTrees`` that has learnt at least one event,
        whose features are ``names`` in column order."""
        trees = getattr(model, "trees", None)
        if not trees:
            raise ValueError("the river model has no trees yet: it builds them on its first event")
        column = {name: i for i, name in enumerate(names)}
        height = int(model.height)  # type: ignore[attr-defined]
        internal, nodes = 2**height - 1, 2 ** (height + 1) - 1
        n = len(trees)
        feature = np.zeros((n, internal), np.int64)
        threshold = np.zeros((n, internal), np.float64)
        l_mass = np.zeros((n, nodes), np.int64)
        r_mass = np.zeros((n, nodes), np.int64)
        for t, root in enumerate(trees):
            stack = [(root, 0)]
            while stack:
                node, i = stack.pop()
                l_mass[t, i], r_mass[t, i] = node.l_mass, node.r_mass
                if i < internal:
                    feature[t, i], threshold[t, i] = column[node.feature], node.threshold
                    left, right = node.children
                    stack += [(left, 2 * i + 1), (right, 2 * i + 2)]
        return cls(
            feature,
            threshold,
            l_mass,
            r_mass,
            window_size=int(model.window_size),  # type: ignore[attr-defined]
            counter=int(model.counter),  # type: ignore[attr-defined]
            first_window=bool(model._first_window),  # type: ignore[attr-defined]
        )

    def _paths(self, x: np.ndarray) -> np.ndarray:
        """(B, F) rows -> (height + 1, B, n_trees): the node each row reaches at each depth."""
        node = np.zeros((len(x), self.n_trees), np.int64)
        out = np.empty((self.height + 1, len(x), self.n_trees), np.int64)
        rows = np.arange(len(x))[:, None]
        for depth in range(self.height):
            out[depth] = node
            # river goes left where value < threshold, so right otherwise (NaN included)
            go_right = ~(
                x[rows, self.feature[self._trees, node]] < self.threshold[self._trees, node]
            )
            node = 2 * node + 1 + go_right
        out[self.height] = node
        return out

    def _score(self, paths: np.ndarray) -> np.ndarray:
        """river's score of each row from its paths: r_mass times 2^depth summed down each tree,
        until a node's mass falls under a tenth of the window (that node's term included)."""
        if self.first_window:
            return np.zeros(paths.shape[1])
        mass = self.r_mass[self._trees[None], paths]  # (height + 1, B, T)
        weights = 2 ** np.arange(self.height + 1, dtype=np.int64)[:, None, None]
        small = mass < 0.1 * self.window_size
        # a node counts while no node above it was small
        open_ = np.concatenate([np.ones((1, *small.shape[1:]), bool), ~small[:-1]])
        open_ = np.logical_and.accumulate(open_, axis=0)
        total = (mass * weights * open_).sum(axis=(0, 2))
        return 1.0 - total.astype(np.float64) / self.max_score

    def _learn(self, paths: np.ndarray) -> None:
        flat = (self._trees[None] * self.l_mass.shape[1] + paths).ravel()
        self.l_mass += np.bincount(flat, minlength=self.l_mass.size).reshape(self.l_mass.shape)

    def _pivot(self) -> None:
        self.r_mass, self.l_mass = self.l_mass, np.zeros_like(self.l_mass)
        self.first_window = False
        self.counter = 0

    def prequential(self, x: np.ndarray, *, score: bool = True) -> np.ndarray:
        """Score each row of ``x`` (B, F) float64 and then learn it, in order; the (B,) scores, in
        [0, 1], high for an anomaly (``score=False``: learn only, zeros returned)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] < self.n_features:
            raise ValueError(f"rows must be (B, >= {self.n_features}), got {x.shape}")
        out = np.zeros(len(x))
        start = 0
        while start < len(x):
            stop = min(len(x), start + self.window_size - self.counter)
            paths = self._paths(x[start:stop])
            if score:
                out[start:stop] = self._score(paths)
            self._learn(paths)
            self.counter += stop - start
            if self.counter == self.window_size:
                self._pivot()
            start = stop
        return out

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that :meth:`from_state` rebuilds the forest from."""
        return {
            "feature": self.feature,
            "threshold": self.threshold,
            "l_mass": self.l_mass,
            "r_mass": self.r_mass,
            "window": np.array(
                [self.window_size, self.counter, int(self.first_window)], dtype=np.int64
            ),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> HalfSpaceForest:
        window = np.asarray(state["window"])
        if window.shape != (3,):
            raise ValueError("window must hold window_size, counter and first_window")
        return cls(
            state["feature"],
            state["threshold"],
            state["l_mass"],
            state["r_mass"],
            window_size=int(window[0]),
            counter=int(window[1]),
            first_window=bool(window[2]),
        )


class HalfSpaceTreesScorer(WindowedScorer):
    """River Half-Space Trees behind the scorer protocol; scoring is prequential (it keeps learning).

    ``n_trees``, ``height`` and ``window_size`` are river's defaults.

    ``per_feature`` of an event is the squared distance of its [0, 1]-scaled value from the training
    median (the last step of a window): HST gives no attribution of its own, and this names the fields
    that sit far from where they usually are.
    """

    kind = "hst"

    def __init__(
        self,
        features: Sequence[str],
        window: int = 1,
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 250,
        holdout: float = 0.2,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(features, window, name)
        if n_trees < 1 or height < 1 or window_size < 1:
            raise ValueError("n_trees, height and window_size must be >= 1")
        self.n_trees, self.height, self.window_size = n_trees, height, window_size
        self.holdout = holdout
        self.seed = seed
        self.forest: HalfSpaceForest | None = None
        self._low = np.zeros(0)
        self._span = np.ones(0)
        self._median = np.zeros(0)

    def fit(self, x: np.ndarray) -> HalfSpaceTreesScorer:
        """Learn the scaling range and the trees from normal rows (N, F) of one series in time order.

        The first ``1 - holdout`` of the rows are learnt; the held-back tail is scored prequentially,
        like live events, to give ``train_scores``.
        """
        rows = self._fit_rows(x)  # (N, D)
        cut = split_holdout(len(rows), self.holdout)
        self._low = rows.min(axis=0)
        high = rows.max(axis=0)
        self._span = np.where(high > self._low, high - self._low, 1.0)
        self._median = np.median(self._scaled(rows), axis=0)
        # river builds the trees from its seed on the first event; the forest takes them over from there
        names = [f"x{i}" for i in range(rows.shape[1])]
        model = HalfSpaceTrees(
            n_trees=self.n_trees, height=self.height, window_size=self.window_size, seed=self.seed
        )
        learn = self._scaled(rows[:cut])
        model.learn_one(dict(zip(names, learn[0].tolist(), strict=True)))
        self.forest = HalfSpaceForest.from_river(model, names)
        self.forest.prequential(learn[1:], score=False)
        self.train_scores = self._prequential(self._scaled(rows[cut:]))
        self.version = version_of(
            self._low,
            self._span,
            extra=f"hst|{self.features}|{self.window}|{self.n_trees}|{self.height}|"
            f"{self.window_size}|{self.seed}|{len(rows)}",
        )
        return self

    def _scaled(self, rows: np.ndarray) -> np.ndarray:
        return np.clip((rows - self._low) / self._span, 0.0, 1.0)

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, int | float]]:
        """(arrays, parameters) that :meth:`from_state` rebuilds this scorer from, as it is now."""
        if self.forest is None:
            raise RuntimeError("HalfSpaceTreesScorer.fit must be called first")
        arrays = {f"forest.{k}": v for k, v in self.forest.state().items()}
        arrays |= {
            "low": self._low,
            "span": self._span,
            "median": self._median,
            "train_scores": self.train_scores,
        }
        params = {"holdout": self.holdout, "seed": self.seed}
        return arrays, params

    @classmethod
    def from_state(
        cls,
        features: Sequence[str],
        window: int,
        arrays: dict[str, np.ndarray],
        params: dict[str, int | float],
        *,
        version: str,
        name: str | None = None,
    ) -> HalfSpaceTreesScorer:
        """The scorer that :meth:`state` described; any inconsistency is a ``ValueError``."""
        forest = HalfSpaceForest.from_state(
            {k[len("forest.") :]: v for k, v in arrays.items() if k.startswith("forest.")}
        )
        self = cls(
            features,
            window,
            n_trees=forest.n_trees,
            height=forest.height,
            window_size=forest.window_size,
            holdout=float(params["holdout"]),
            seed=int(params["seed"]),
            name=name,
        )
        d = window * len(self.features)
        low, span, median = (np.asarray(arrays[k], np.float64) for k in ("low", "span", "median"))
        if low.shape != (d,) or span.shape != (d,) or median.shape != (d,):
            raise ValueError(f"low, span and median must be ({d},)")
        if not (np.isfinite(low).all() and np.isfinite(span).all() and (span > 0).all()):
            raise ValueError("low must be finite and span finite and positive")
        if forest.n_features > d:
            raise ValueError(f"the trees split on input {forest.n_features - 1} of {d}")
        scores = np.asarray(arrays["train_scores"], np.float64)
        if scores.ndim != 1 or not len(scores) or not np.isfinite(scores).all():
            raise ValueError("train_scores must be a non-empty vector of finite numbers")
        self.forest, self._low, self._span, self._median = forest, low, span, median
        self.train_scores, self.version = scores, version
        return self

    def _prequential(self, scaled: np.ndarray) -> np.ndarray:
        if self.forest is None:
            raise RuntimeError("HalfSpaceTreesScorer.fit must be called before scoring")
        return self.forest.prequential(scaled)

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw (B, F) or (B, W, F) -> (score (B,) float64, per-feature (B, F) float32); learns as it goes."""
        scaled = self._scaled(self._flat(x))  # (B, D)
        scores = self._prequential(scaled)
        f = len(self.features)
        last = scaled[:, -f:] - self._median[-f:]  # the event itself: the window's last step
        return scores, np.square(last).astype(np.float32)
