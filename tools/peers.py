r"""Peers measured in one run: Torch-Pruning next to tf_filterprune.

Two parts (``--parts``), each side in its own virtual environment: the Keras side in
``.venv`` (``--keras_python``), the PyTorch side in ``.venv-peers``
(``--torch_python``; set it up with ``bash tools/setup_peers.sh``). This process only
orchestrates the subprocesses and writes the outputs.

(a) ``resnet``: pruning ResNet-50 at 224x224 (weights=None) in both libraries:
    ``tffp.prune_once(keras.applications.ResNet50(...), "l1", keep_ratio=0.6)`` and
    Torch-Pruning's ``MagnitudePruner`` with ``MagnitudeImportance(p=1)`` at
    ``pruning_ratio=0.4`` (the same keep ratio; classifier ignored) on torchvision's
    ``resnet50(weights=None)``, in place. ``--rounds`` interleaved rounds, one fresh
    subprocess per side per round (an untimed warm-up call, then ``--repeats`` timed
    calls); median seconds and each library's MACs ratio.

(b) ``cnn``: Torch-Pruning's L1, Taylor, BN-scale and GroupNorm pruners on a PyTorch
    port of ``tffp.models.fashion_cnn`` (checked layer by layer against the Keras
    model, parameter counts asserted equal) under our benchmark protocol: the same
    Fashion-MNIST IDX files, the examples in the order our ``l1_finetune`` row feeds
    them in each epoch (recorded by the Keras side from the real ``tf.data``
    pipeline), batch 128, seeds, ``--pretrain_epochs`` + ``--finetune_epochs`` of Adam
    with a cosine decay to 1% of ``--lr`` per phase, every layer pruned to exactly
    our widths (from ``tffp.prune_once(fashion_cnn(), "l1",
    target_macs_reduction=..., round_to=..., ignored_layers=...)``), BN statistics
    re-estimated on the first ``--bn_steps`` unshuffled training batches before every
    evaluation; accuracy right after the cut and after fine-tuning. One JSON line per
    (pruner, seed) in ``runs.jsonl``: a rerun skips the pairs already there.

Outputs in ``--output_dir``: ``runs.jsonl`` (b), ``peers.json`` (both parts; a part
not run keeps its previous result) and ``peers.md`` (the tables). Scratch files
(recorded orders, pretrained checkpoints) go to ``--work_dir``.

Usage:

    bash tools/setup_peers.sh
    .venv/bin/python tools/peers.py                       # both parts, 3 seeds
    .venv/bin/python tools/peers.py --parts resnet        # (a) only
    nohup nice -n 15 .venv/bin/python tools/peers.py --parts cnn > peers.log 2>&1 &
    .venv/bin/python tools/peers.py --quick --output_dir /tmp/peers   # smoke run
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
if str(TOOLS) not in sys.path:  # the ``peers`` package next to this file
    sys.path.insert(0, str(TOOLS))

from absl import app, flags  # noqa: E402
from peers.config import PRUNERS, CnnConfig, ResNetConfig  # noqa: E402
from peers.run import SideError, load_results, run_cnn, run_resnet, write_outputs  # noqa: E402

QUICK_TRAIN_LIMIT = 384
QUICK_TEST_LIMIT = 500

FLAGS = flags.FLAGS
flags.DEFINE_list("parts", ["resnet", "cnn"], "Parts to run: resnet (a) and/or cnn (b).")
flags.DEFINE_string(
    "output_dir",
    "benchmarks/results/peers",
    "Where runs.jsonl, peers.json and peers.md go (relative paths: from the repository root).",
)
flags.DEFINE_string(
    "work_dir",
    "artifacts/peers",
    "Scratch files: recorded example orders, pretrained checkpoints, subprocess requests.",
)
flags.DEFINE_string(
    "keras_python",
    str(REPO / ".venv" / "bin" / "python"),
    "Python of the tf_filterprune side (TensorFlow).",
)
flags.DEFINE_string(
    "torch_python",
    str(REPO / ".venv-peers" / "bin" / "python"),
    "Python of the Torch-Pruning side (tools/setup_peers.sh).",
)
flags.DEFINE_bool(
    "quick",
    False,
    f"Smoke run: the first {QUICK_TRAIN_LIMIT} training and "
    f"{QUICK_TEST_LIMIT} test images, seed 0 only, one ResNet-50 round "
    "(other flags still apply unless they are at their defaults).",
)
# (a)
flags.DEFINE_float("keep_ratio", 0.6, "(a) Fraction of channels kept per layer, both libraries.")
flags.DEFINE_integer("rounds", 3, "(a) Interleaved rounds (one subprocess per side each).")
flags.DEFINE_integer("repeats", 1, "(a) Timed prune calls per subprocess, after a warm-up.")
# (b)
flags.DEFINE_string("seeds", "0,1,2", "(b) Comma-separated seeds.")
flags.DEFINE_list("pruners", list(PRUNERS), f"(b) Torch-Pruning pruners, of {list(PRUNERS)}.")
flags.DEFINE_integer("pretrain_epochs", 3, "(b) Epochs before the cut.")
flags.DEFINE_integer("finetune_epochs", 2, "(b) Epochs after the cut.")
flags.DEFINE_float("macs_reduction", 0.5, "(b) Fraction of MACs our L1 cut removes (widths).")
flags.DEFINE_integer("round_to", 16, "(b) Channel counts multiples of this (our cut).")
flags.DEFINE_list("ignored_layers", ["conv1"], "(b) Convs kept whole (our cut and theirs).")
flags.DEFINE_float("lr", 2e-3, "(b) Peak learning rate (Adam, cosine decay to 1% per phase).")
flags.DEFINE_integer("batch_size", 128, "(b) Training batch size.")
flags.DEFINE_integer("bn_steps", 50, "(b) First unshuffled training batches for BN statistics.")
flags.DEFINE_integer(
    "taylor_batches", 10, "(b) First training batches whose gradients the Taylor pruner uses."
)
flags.DEFINE_integer("train_limit", None, "(b) Use only the first N training images.")
flags.DEFINE_integer("test_limit", None, "(b) Use only the first N test images.")
flags.DEFINE_integer("threads", 2, "Intra-op threads of every subprocess (both parts).")
flags.DEFINE_bool("overwrite", False, "(b) Rerun (pruner, seed) pairs already in runs.jsonl.")
flags.DEFINE_string(
    "ours_runs",
    "benchmarks/results/fashion_round16_conv1/runs.jsonl",
    "(b) Our benchmark's runs.jsonl whose rows at the same settings are shown "
    "in peers.md ('' for none).",
)


def _path(text: str) -> Path:
    path = Path(text)
    return path if path.is_absolute() else REPO / path


def cnn_config_from_flags() -> CnnConfig:
    seeds = tuple(int(s) for s in FLAGS.seeds.split(",") if s.strip())
    train_limit, test_limit = FLAGS.train_limit, FLAGS.test_limit
    if FLAGS.quick:
        seeds = seeds if FLAGS["seeds"].present else (0,)
        train_limit = train_limit or QUICK_TRAIN_LIMIT
        test_limit = test_limit or QUICK_TEST_LIMIT
    return CnnConfig(
        pretrain_epochs=FLAGS.pretrain_epochs,
        finetune_epochs=FLAGS.finetune_epochs,
        macs_reduction=FLAGS.macs_reduction,
        round_to=FLAGS.round_to,
        ignored_layers=tuple(FLAGS.ignored_layers),
        lr=FLAGS.lr,
        batch_size=FLAGS.batch_size,
        bn_steps=FLAGS.bn_steps,
        taylor_batches=FLAGS.taylor_batches,
        train_limit=train_limit,
        test_limit=test_limit,
        seeds=seeds,
        pruners=tuple(FLAGS.pruners),
        threads=FLAGS.threads,
    )


def resnet_config_from_flags() -> ResNetConfig:
    rounds = FLAGS.rounds
    if FLAGS.quick and not FLAGS["rounds"].present:
        rounds = 1
    return ResNetConfig(
        keep_ratio=FLAGS.keep_ratio, rounds=rounds, repeats=FLAGS.repeats, threads=FLAGS.threads
    )


def main(argv: list[str]) -> None:
    del argv
    parts = set(FLAGS.parts)
    if not parts or parts - {"resnet", "cnn"}:
        raise app.UsageError(f"--parts must name resnet and/or cnn, got {FLAGS.parts}")
    try:
        cnn_config = cnn_config_from_flags() if "cnn" in parts else None
        resnet_config = resnet_config_from_flags() if "resnet" in parts else None
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    for name, python in (
        ("--keras_python", FLAGS.keras_python),
        ("--torch_python", FLAGS.torch_python),
    ):
        if not os.access(python, os.X_OK):
            hint = " (run: bash tools/setup_peers.sh)" if name == "--torch_python" else ""
            raise app.UsageError(f"{name} {python} is not an executable{hint}")
    output_dir, work_dir = _path(FLAGS.output_dir), _path(FLAGS.work_dir)
    if FLAGS.quick and not FLAGS["work_dir"].present:
        work_dir = output_dir / "work"
    started = time.time()
    ran: dict = {}  # the parts run now; merged into peers.json as it is on disk when writing
    ours = _path(FLAGS.ours_runs) if FLAGS.ours_runs else None

    def write() -> str:
        results = load_results(output_dir)
        results.update(ran)
        return write_outputs(output_dir, results, cnn_config, resnet_config, ours)

    try:
        if resnet_config is not None:
            ran["resnet50"] = run_resnet(
                resnet_config, FLAGS.keras_python, FLAGS.torch_python, work_dir
            )
            write()
        if cnn_config is not None:
            ran["cnn"] = run_cnn(
                cnn_config,
                FLAGS.keras_python,
                FLAGS.torch_python,
                output_dir,
                work_dir,
                overwrite=FLAGS.overwrite,
                progress=lambda partial: (ran.update(cnn=partial), write()),
            )
    except SideError as error:
        print(f"!! {error}", file=sys.stderr)
        sys.exit(1)
    text = write()
    print("\n" + text)
    print(f"done in {(time.time() - started) / 60:.1f} min; results in {output_dir}")


if __name__ == "__main__":
    app.run(main)
