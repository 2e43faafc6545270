"""Feature extraction with a frozen detector GraphDef, driven through TensorFlow's v1 graph API.

The detector is ADM's `classify_image_graph_def.pb` (Inception-v3, 2015-12-05) or our toy
detector, which exports the same tensor names. The images enter at `ExpandDims:0` as float32 in
[0, 255]; the graph itself resizes (TF1 bilinear, no half-pixel centres) and normalises. Outputs:
`pool_3:0` -> [N, P]; `mixed_6/conv:0`[..., :7] flattened in (h, w, c) order -> sFID features;
class probabilities = softmax(pool @ W) with W the weight input of `softmax/logits/MatMul` and no
bias (docs/method.md §5.1). The toy detector also predicts classes with its own head,
argmax(pool @ W + b), for the class accuracy of samples.
"""

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
import tensorflow as tf  # noqa: E402  (after the log level; TF enters only here and in tf_ops)

from sfd.evaluation.batches import EvalInputError  # noqa: E402
from sfd.evaluation.tf_ops import session_config  # noqa: E402

INPUT_TENSOR = "ExpandDims:0"
POOL_TENSOR = "pool_3:0"
SPATIAL_TENSOR = "mixed_6/conv:0"
LOGITS_MATMUL_OP = "softmax/logits/MatMul"
LOGITS_OP = "softmax/logits"  # the toy detector's BiasAdd after the MatMul: its classifier head
SPATIAL_CHANNELS = 7  # sFID keeps the first 7 channels of mixed_6/conv
TOY_INFO_NODE = "sfd_toy_detector/info"  # a string Const the toy detector carries; Inception has none


def read_graph_def(path) -> "tf.compat.v1.GraphDef":
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{path}: no such detector graph (fetch it with `sfd fetch-eval-assets`)")
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception as err:  # protobuf raises its own DecodeError
        raise EvalInputError(f"{path}: not a TensorFlow GraphDef ({err})") from None
    return graph_def


def toy_info(graph_def) -> dict | None:
    """The metadata a toy detector embeds (image size, classes, held-out accuracy), else None."""
    for node in graph_def.node:
        if node.name == TOY_INFO_NODE:
            return json.loads(node.attr["value"].tensor.string_val[0].decode())
    return None


class Detector:
    """One TF session holding the detector graph, fed the way ADM feeds it."""

    def __init__(self, path, batch_size: int = 64, softmax_batch_size: int = 512):
        self.path = Path(path)
        self.batch_size = batch_size
        self.softmax_batch_size = softmax_batch_size
        graph_def = read_graph_def(self.path)
        self.info = toy_info(graph_def)
        self.kind = "inception" if self.info is None else "toy"
        graph = tf.Graph()
        with graph.as_default():
            self._images = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3])
            wanted = [POOL_TENSOR, SPATIAL_TENSOR, LOGITS_MATMUL_OP] + ([LOGITS_OP] if self.info else [])
            try:
                pool, spatial, matmul, *head = tf.import_graph_def(
                    graph_def,
                    input_map={INPUT_TENSOR: self._images},
                    return_elements=wanted,
                    name="detector",
                )
            except ValueError as err:
                raise EvalInputError(f"{self.path}: not a usable detector graph ({err})") from None
            self._pool = pool
            self._spatial = spatial[..., :SPATIAL_CHANNELS]
            weights = matmul.inputs[1]
            self.pool_dim = int(weights.shape[0])
            self.num_classes = int(weights.shape[1])
            self._pool_input = tf.compat.v1.placeholder(tf.float32, [None, self.pool_dim])
            self._probs = tf.nn.softmax(tf.matmul(self._pool_input, weights))
            logits = tf.matmul(self._pool_input, weights)
            self._logits = tf.nn.bias_add(logits, head[0].inputs[1]) if head else None
        self.session = tf.compat.v1.Session(graph=graph, config=session_config())

    def close(self) -> None:
        self.session.close()

    def features(self, batches: Iterable[np.ndarray], total: int, desc: str = "features"):
        """(pool [N, P], spatial [N, h*w*7]) float32 for uint8 NHWC batches."""
        pools, spatials = [], []
        with tqdm(total=total, desc=desc, unit="img") as bar:
            for batch in batches:
                pool, spatial = self.session.run(
                    [self._pool, self._spatial], {self._images: batch.astype(np.float32)}
                )
                pools.append(pool.reshape(len(pool), -1))
                spatials.append(spatial.reshape(len(spatial), -1))
                bar.update(len(batch))
        return np.concatenate(pools), np.concatenate(spatials)

    def class_probs(self, pool: np.ndarray) -> np.ndarray:
        """softmax(pool @ W) [N, classes] float32, in batches of `softmax_batch_size`."""
        return np.concatenate(
            [
                self.session.run(self._probs, {self._pool_input: pool[i : i + self.softmax_batch_size]})
                for i in range(0, len(pool), self.softmax_batch_size)
            ]
        )

    def predicted_classes(self, pool: np.ndarray) -> np.ndarray:
        """argmax(pool @ W + b) [N] int64: the toy detector's class decision (its head keeps the bias)."""
        if self._logits is None:
            raise EvalInputError(f"{self.path}: only the toy detector is trained on classes we condition on")
        step = self.softmax_batch_size
        logits = [
            self.session.run(self._logits, {self._pool_input: pool[i : i + step]})
            for i in range(0, len(pool), step)
        ]
        return np.argmax(np.concatenate(logits), 1)
