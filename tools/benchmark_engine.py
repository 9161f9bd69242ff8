r"""Engine benchmark: pruning cost vs clone_model, and TFLite latency vs MACs.

Measured in one run, on this machine (shared and noisy: only ratios are
reported, and timings are interleaved so noise hits both sides alike):

1. ``prune_once`` on keras.applications ResNet50 (224x224, weights=None) divided
   by one ``keras.models.clone_model`` + ``set_weights`` of the same model
   (target <= 2; Torch-Pruning 1.6.1 prunes torchvision ResNet-50 in place in
   0.32 s on 2 cores).
2. CIFAR ResNet-56 and VGG-16 pruned to half their MACs with ``round_to=8``:
   TFLite float latency(compact) / latency(original), batch 1, one thread,
   interleaved, next to MACs(compact) / MACs(original). Targets: latency ratio
   <= 1.25 x MACs ratio (ResNet-56) and <= 1.15 x (VGG-16). The Fashion-MNIST
   CNN of the method comparison is timed too: at round_to 16 with its first conv
   kept whole (the comparison's setting; target <= 1.25 x), and at round_to 8
   and 16 with every conv cut (information).

Usage:

    .venv/bin/python tools/benchmark_engine.py --output benchmarks/results/engine.json
    .venv/bin/python tools/benchmark_engine.py --nospeed   # latency only; keeps the rest
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app, flags, logging  # noqa: E402

import tf_filterprune as tffp  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output", "benchmarks/results/engine.json", "Where to write the results.")
flags.DEFINE_integer("speed_repeats", 3, "Interleaved repeats of prune_once vs clone_model.")
flags.DEFINE_integer("latency_rounds", 30, "Interleaved latency rounds per model pair.")
flags.DEFINE_bool("speed", True, "Run the pruning-cost benchmark.")
flags.DEFINE_bool("latency", True, "Run the TFLite latency benchmark.")

# (row name, model builder, prune_once keyword arguments, target latency/MACs ratio).
# ResNets are pruned as the DCFF / DPFPS papers do (block-internal convs only);
# the two extra rows show the other choices, for information.
VARIANTS = (
    ("resnet56", "resnet56", {"prune_residual": False}, 1.25),
    ("vgg16_cifar", "vgg16_cifar", {}, 1.15),
    ("resnet56_residual_cut_too", "resnet56", {}, None),
    ("resnet56_residual_cut_too_round16", "resnet56", {"round_to": 16}, None),
    (
        "fashion_cnn_round16_conv1_whole",
        "fashion_cnn",
        {"round_to": 16, "ignored_layers": ["conv1"]},
        1.25,
    ),
    ("fashion_cnn", "fashion_cnn", {}, None),
    ("fashion_cnn_round16", "fashion_cnn", {"round_to": 16}, None),
)


def clone_with_weights(model: keras.Model) -> keras.Model:
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pruning_cost(repeats: int) -> dict:
    """Median prune_once time over median clone_model+set_weights time (ResNet50)."""
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    clone_with_weights(model)  # warm-up of both paths
    tffp.prune_once(model, "l1", keep_ratio=0.5)
    clone_times, prune_times = [], []
    for _ in range(repeats):
        clone_times.append(timed(lambda: clone_with_weights(model)))
        prune_times.append(timed(lambda: tffp.prune_once(model, "l1", keep_ratio=0.5)))
    clone_s, prune_s = statistics.median(clone_times), statistics.median(prune_times)
    result = {
        "model": "keras.applications.ResNet50 224x224",
        "clone_model_plus_set_weights_s": clone_s,
        "prune_once_s": prune_s,
        "ratio": prune_s / clone_s,
        "target_ratio": 2.0,
    }
    print(
        f"prune_once(ResNet50) / clone_model+set_weights = {result['ratio']:.2f} "
        f"({prune_s:.2f} s / {clone_s:.2f} s; target <= 2)"
    )
    return result


def latency_vs_macs(rounds: int) -> list[dict]:
    """Latency and MACs ratios of each variant at half the MACs, measured interleaved."""
    names = sorted({base for _, base, _, _ in VARIANTS})
    originals = {name: getattr(tffp.models, name)() for name in names}
    blobs = {name: tffp.export.to_tflite(model) for name, model in originals.items()}
    macs_ratios = {}
    for row, base, kwargs, _ in VARIANTS:
        options = {"round_to": 8, **kwargs}
        compact = tffp.prune_once(originals[base], "l1", target_macs_reduction=0.5, **options)
        full = tffp.profile(originals[base]).total_macs
        macs_ratios[row] = tffp.profile(compact).total_macs / full
        blobs[f"pruned:{row}"] = tffp.export.to_tflite(compact)
    latency = tffp.export.compare_latency(blobs, num_threads=1, rounds=rounds)
    rows = []
    for row, base, kwargs, target in VARIANTS:
        pruned = f"pruned:{row}"
        latency_ratio = latency[pruned].median_ms / latency[base].median_ms
        result = {
            "model": row,
            "options": {"round_to": 8, **kwargs},
            "macs_ratio": macs_ratios[row],
            "latency_ratio": latency_ratio,
            "latency_over_macs": latency_ratio / macs_ratios[row],
            "target_latency_over_macs": target,
            "original_ms": latency[base].median_ms,
            "compact_ms": latency[pruned].median_ms,
            "bytes_ratio": len(blobs[pruned]) / len(blobs[base]),
        }
        verdict = "" if target is None else f" (target <= {target})"
        print(
            f"{row}: MACs ratio {result['macs_ratio']:.3f}, TFLite latency ratio "
            f"{latency_ratio:.3f} = {result['latency_over_macs']:.2f} x MACs{verdict}, "
            f"bytes ratio {result['bytes_ratio']:.3f}"
        )
        rows.append(result)
    return rows


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    results = {"machine_cores": os.cpu_count(), "keras": keras.__version__}
    if FLAGS.speed:
        results["pruning_cost"] = pruning_cost(FLAGS.speed_repeats)
    if FLAGS.latency:
        results["latency"] = latency_vs_macs(FLAGS.latency_rounds)
    out = Path(FLAGS.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # keep the parts of an earlier run that this one skipped
        results = {**json.loads(out.read_text()), **results}
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
