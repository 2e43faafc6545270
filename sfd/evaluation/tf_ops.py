"""ADM's TensorFlow graph for precision/recall distances, and ADM's session options.

Precision and recall count points whose squared distance is <= a k-NN radius, and ADM computes
those distances with float16 inputs. Which entries next to a radius round up or down depends on
the kernels TensorFlow runs on the machine: on a CPU the fp16 reductions accumulate differently
from a GPU's, so about a third of the entries of a 2048-d block differ from a GPU-style numpy
emulation. The one way to get ADM's numbers on the machine at hand is to run ADM's own ops there,
so this module builds guided-diffusion's `DistanceBlock` graph op for op: float32 placeholders
cast to float16 in the graph, max(|u|^2 - 2 u v^T + |v|^2, 0), and a `cond` that returns the fp16
block cast to float32 when all of it is finite, else the same formula on the float32 inputs. The
comparisons with the radii are left to numpy (`metrics.precision_recall`): ADM's `less_thans`
compares the same float32 block with `<=`, which gives the same booleans.

Like `inception`, this module imports TensorFlow and must never import torch/timm.
"""

import functools
import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
import tensorflow as tf  # noqa: E402  (after the log level)


def session_config() -> "tf.compat.v1.ConfigProto":
    """ADM's session options: soft placement (DecodeJpeg stays on the CPU), GPU memory on demand."""
    config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    config.gpu_options.allow_growth = True
    return config


def squared_distances(u: "tf.Tensor", v: "tf.Tensor") -> "tf.Tensor":
    """max(|u|^2 - 2 u v^T + |v|^2, 0) in the dtype of u and v, in ADM's operation order."""
    norm_u = tf.reshape(tf.reduce_sum(tf.square(u), 1), [-1, 1])
    norm_v = tf.reshape(tf.reduce_sum(tf.square(v), 1), [1, -1])
    return tf.maximum(norm_u - 2 * tf.matmul(u, v, False, True) + norm_v, 0.0)


class DistanceBlock:
    """One session holding ADM's fp16-first distance graph; call it as a `metrics.DistanceFn`."""

    def __init__(self):
        graph = tf.Graph()
        with graph.as_default():
            self._u = tf.compat.v1.placeholder(tf.float32, [None, None])
            self._v = tf.compat.v1.placeholder(tf.float32, [None, None])
            block16 = squared_distances(tf.cast(self._u, tf.float16), tf.cast(self._v, tf.float16))
            self._block = tf.compat.v1.cond(
                tf.reduce_all(tf.math.is_finite(block16)),
                lambda: tf.cast(block16, tf.float32),
                lambda: squared_distances(self._u, self._v),
            )
        self._session = tf.compat.v1.Session(graph=graph, config=session_config())

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Squared distances [len(u), len(v)] float32 of two float32 feature batches."""
        return self._session.run(self._block, {self._u: u, self._v: v})


@functools.cache
def adm_distance_block() -> DistanceBlock:
    """The process's one DistanceBlock: the graph is built and its session opened once."""
    return DistanceBlock()
