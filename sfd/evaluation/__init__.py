"""ADM-equivalent evaluation (FID, sFID, IS, precision/recall) of `arr_0` sample batches.

The numbers reproduce `guided-diffusion/evaluations/evaluator.py` (docs/method.md §5.1): the same Inception
GraphDef driven through TensorFlow, the same statistics and the same fp16-first distance blocks.
No module in this package may import torch, timm or torchvision: TensorFlow and triton in one
process segfault. TensorFlow itself is imported only by `inception`, `tf_ops` and `toy_detector`.
"""

EVALUATOR_VERSION = "sfd-adm-eval/2"  # 2: P/R distances through ADM's TF graph
