"""A small CNN classifier for the toy dataset, exported as a frozen GraphDef that looks like Inception.

The toy pipeline has no ImageNet images, so FID-style metrics need a detector trained on the toy
classes. Its graph carries Inception's tensor names (`ExpandDims:0` input in [0, 255], an in-graph
TF1 bilinear resize and (x - 128) / 128, `mixed_6/conv:0`, `pool_3:0`, `softmax/logits/MatMul`
reading a [P, classes] weight), so `sfd evaluate` runs the exact code path it runs on ADM's
Inception graph. Numbers it yields are toy-FID etc., never comparable to FID-50K.

One `forward` serves training (eager, tf.Variables) and export (graph mode, constants).
"""

import json
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sfd.evaluation import inception  # sets TF's log level before importing it
from sfd.evaluation.batches import EvalInputError

tf = inception.tf
log = logging.getLogger(__name__)

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = ("evaluation.toy_detector",)

# (name, stride) of the conv+ReLU stages; widths come from the config, the last one is P.
STAGES = (("conv0", 1), ("conv1", 2), ("mixed_6/conv", 2), ("conv3", 1))


def init_params(widths, num_classes: int, seed: int) -> dict[str, np.ndarray]:
    """He-normal 3x3 kernels, zero biases, from a seeded numpy generator (bit-reproducible)."""
    if len(widths) != len(STAGES):
        raise ValueError(f"toy_detector.widths needs {len(STAGES)} entries, got {list(widths)}")
    rng = np.random.default_rng(seed)
    params, cin = {}, 3
    for (name, _), cout in zip(STAGES, widths, strict=True):
        params[f"{name}/weights"] = rng.normal(0, np.sqrt(2 / (9 * cin)), (3, 3, cin, cout)).astype(
            np.float32
        )
        params[f"{name}/biases"] = np.zeros(cout, np.float32)
        cin = cout
    params["softmax/weights"] = rng.normal(0, np.sqrt(1 / cin), (cin, num_classes)).astype(np.float32)
    params["softmax/biases"] = np.zeros(num_classes, np.float32)
    return params


def forward(params, images, image_size: int):
    """images float [B, H, W, 3] in [0, 255] -> (spatial, pool [B,1,1,P], logits), Inception's names."""
    x = tf.raw_ops.ResizeBilinear(  # TF1 semantics, as in Inception's graph
        images=images,
        size=[image_size, image_size],
        align_corners=False,
        half_pixel_centers=False,
        name="ResizeBilinear",
    )
    x = tf.multiply(tf.subtract(x, 128.0, name="Sub"), 1.0 / 128.0, name="Mul")
    spatial = None
    for name, stride in STAGES:
        x = tf.nn.conv2d(x, params[f"{name}/weights"], stride, "SAME", name=f"{name}/Conv2D")
        x = tf.nn.relu(tf.nn.bias_add(x, params[f"{name}/biases"], name=f"{name}/BiasAdd"), name=name)
        if name == "mixed_6/conv":
            spatial = x
    pool = tf.nn.avg_pool2d(x, ksize=x.shape[1:3], strides=1, padding="VALID", name="pool_3")
    flat = tf.reshape(pool, [-1, pool.shape[-1]], name="pool_3/_reshape")
    matmul = tf.matmul(flat, params["softmax/weights"], name="softmax/logits/MatMul")
    logits = tf.nn.bias_add(matmul, params["softmax/biases"], name="softmax/logits")
    return spatial, pool, logits


def export_graph_def(params: dict[str, np.ndarray], image_size: int, info: dict | None):
    """A frozen GraphDef: constants for every weight, input placeholder named `ExpandDims`. Without
    `info` (the toy marker node) the evaluator takes it for Inception: a stand-in for tests."""
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="ExpandDims")
        constants = {name: tf.constant(value, name=name) for name, value in params.items()}
        _, _, logits = forward(constants, images, image_size)
        tf.nn.softmax(logits, name="softmax")
        if info is not None:
            tf.constant(json.dumps(info, sort_keys=True), name=inception.TOY_INFO_NODE)
    return graph.as_graph_def()


def load_labeled_images(path) -> tuple[np.ndarray, np.ndarray, int]:
    """(images uint8 [N,H,W,3], labels int64 [N], num_classes) of a toy-data npz."""
    from sfd.data.toy import load_npz  # numpy-only, safe in this TF process

    if not Path(path).is_file():
        raise EvalInputError(f"{path}: no such file")
    try:
        images, labels, class_names = load_npz(path)
    except ValueError as err:
        raise EvalInputError(str(err)) from None
    if len(images) == 0 or labels.min() < 0 or labels.max() >= len(class_names):
        raise EvalInputError(f"{path}: labels must lie in [0, {len(class_names)}) and there must be images")
    return images, labels, len(class_names)


def accuracy(params, images: np.ndarray, labels: np.ndarray, image_size: int, batch_size: int = 256) -> float:
    hits = 0
    for start in range(0, len(images), batch_size):
        x = tf.constant(images[start : start + batch_size], tf.float32)
        _, _, logits = forward(params, x, image_size)
        hits += int(np.sum(np.argmax(logits.numpy(), 1) == labels[start : start + batch_size]))
    return hits / len(images)


def train(images, labels, num_classes: int, cfg: dict):
    """Adam on softmax cross-entropy for `cfg['steps']` steps; returns the trained numpy params.

    Seeded init, seeded batch order and TF op determinism make two runs bit-identical.
    """
    tf.keras.utils.set_random_seed(cfg["seed"])
    tf.config.experimental.enable_op_determinism()
    variables = {
        k: tf.Variable(v, name=k) for k, v in init_params(cfg["widths"], num_classes, cfg["seed"]).items()
    }
    optimizer = tf.keras.optimizers.Adam(cfg["learning_rate"])
    image_size = cfg["image_size"]

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            _, _, logits = forward(variables, x, image_size)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        grads = tape.gradient(loss, list(variables.values()))
        optimizer.apply_gradients(zip(grads, variables.values(), strict=True))
        return loss

    rng = np.random.default_rng(cfg["seed"])
    batch_size = min(cfg["batch_size"], len(images))
    order, cursor = rng.permutation(len(images)), 0
    with tqdm(range(cfg["steps"]), desc="train-detector", unit="step") as bar:
        for _ in bar:
            if cursor + batch_size > len(order):
                order, cursor = rng.permutation(len(images)), 0
            idx = order[cursor : cursor + batch_size]
            cursor += batch_size
            loss = step(tf.constant(images[idx], tf.float32), tf.constant(labels[idx]))
            bar.set_postfix(loss=f"{float(loss):.3f}")
    return {k: v.numpy() for k, v in variables.items()}


def add_arguments(parser) -> None:
    parser.add_argument(
        "--config", required=True, help="experiment YAML (its evaluation.toy_detector section)"
    )
    parser.add_argument("--data", required=True, help="training npz (images, labels)")
    parser.add_argument("--val", required=True, help="held-out npz for the reported accuracy")
    parser.add_argument("--out", required=True, help="frozen GraphDef to write (.pb)")
    parser.add_argument("--metrics", help="optional JSON with the held-out accuracy and training facts")


def main(args) -> int:
    from sfd.io import atomic_write, sha256, write_json
    from sfd.reads import view

    cfg = view(args.config, __name__)["evaluation"]["toy_detector"]
    images, labels, num_classes = load_labeled_images(args.data)
    val_images, val_labels, _ = load_labeled_images(args.val)
    log.info(
        "training toy detector on %d images, %d classes, %d steps", len(images), num_classes, cfg["steps"]
    )
    params = train(images, labels, num_classes, cfg)
    val_accuracy = accuracy(params, val_images, val_labels, cfg["image_size"])
    log.info("held-out accuracy on %s: %.4f (%d images)", args.val, val_accuracy, len(val_images))
    info = {
        "image_size": cfg["image_size"],
        "num_classes": num_classes,
        "widths": list(cfg["widths"]),
        "steps": cfg["steps"],
        "seed": cfg["seed"],
        "train_sha256": sha256(args.data),
        "val_accuracy": val_accuracy,
    }
    graph_def = export_graph_def(params, cfg["image_size"], info)
    with atomic_write(args.out) as f:
        f.write(graph_def.SerializeToString(deterministic=True))
    log.info("wrote %s", args.out)
    if args.metrics:
        write_json({**info, "val_images": len(val_images), "detector_sha256": sha256(args.out)}, args.metrics)
    return 0
