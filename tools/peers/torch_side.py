"""The Torch-Pruning side of the peers run; runs in ``.venv-peers`` (torch, no TF).

Commands (``python -m peers.torch_side COMMAND --request req.json --response out.json``,
with ``tools/`` on ``PYTHONPATH``):

- ``cnn``: part (b) for one seed: the PyTorch port of ``tffp.models.fashion_cnn``
  (checked layer by layer against the Keras model's settings, parameter counts
  asserted equal), pretrained under the benchmark protocol on the example order the
  Keras side recorded, then pruned by each requested Torch-Pruning pruner to exactly
  our widths, evaluated, fine-tuned and evaluated again; one JSON line per pruner
  appended to the run's jsonl as soon as it is done.
- ``resnet50``: times Torch-Pruning pruning torchvision ResNet-50 (part (a)).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parents[1]
REPO = TOOLS.parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch_pruning as tp  # noqa: E402
from torch import nn  # noqa: E402

from peers.config import (  # noqa: E402
    CONV_NAMES,
    CnnConfig,
    ResNetConfig,
    append_record,
    pruning_ratios,
)

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# Keras' defaults, matched in the port (checked against the Keras model's config).
KERAS_BN_MOMENTUM = 0.99  # moving = momentum * moving + (1 - momentum) * batch
KERAS_BN_EPSILON = 1e-3
KERAS_ADAM_EPSILON = 1e-7
TRUNCATED_NORMAL_STDDEV_FIX = 0.87962566103423978  # keras VarianceScaling, truncated at 2 std


# --------------------------------------------------------------------------- #
# Data: the IDX files read with tf_filterprune's own numpy reader
# --------------------------------------------------------------------------- #


def _idx_module():
    """``tf_filterprune/data/idx.py`` loaded by path (it needs only numpy and gzip;
    importing the package would import TensorFlow)."""
    spec = importlib.util.spec_from_file_location(
        "_tffp_idx", REPO / "tf_filterprune" / "data" / "idx.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fashion_folder(split: str) -> str:
    """As ``tf_filterprune.data.fashion_mnist``: ``$FASHION_MNIST_DIR``, then Debian's."""
    for folder in (os.environ.get("FASHION_MNIST_DIR"), DEFAULT_FASHION_MNIST_DIR):
        if folder and all(os.path.isfile(os.path.join(folder, f)) for f in FILES[split]):
            return folder
    raise FileNotFoundError(
        "Fashion-MNIST IDX files not found: apt-get install dataset-fashion-mnist "
        "or set FASHION_MNIST_DIR"
    )


def load_split(split: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 NCHW images in [0, 1] (``uint8 / 255``, as ``_to_float``) and int64 labels."""
    read_idx = _idx_module().read_idx
    folder = fashion_folder(split)
    images = read_idx(os.path.join(folder, FILES[split][0]))
    labels = read_idx(os.path.join(folder, FILES[split][1]))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.astype(np.float32) / np.float32(255.0)).unsqueeze(1)
    return x.contiguous(), torch.from_numpy(labels.astype(np.int64))


def batches(n: int, batch_size: int, order: np.ndarray | None = None):
    """Index arrays of consecutive batches (the last one may be smaller)."""
    order = np.arange(n) if order is None else order
    for start in range(0, n, batch_size):
        yield torch.from_numpy(np.ascontiguousarray(order[start : start + batch_size]))


# --------------------------------------------------------------------------- #
# The port of tffp.models.fashion_cnn
# --------------------------------------------------------------------------- #


class FashionCNN(nn.Module):
    """``tffp.models.fashion_cnn()`` in PyTorch (NCHW).

    ``Conv3x3(same, bias)-BN-ReLU`` x2, ``MaxPool2``, x2, ``MaxPool2``, one more,
    global average pooling, ``Linear(10)``; BN with Keras' ``epsilon=1e-3`` and
    momentum 0.99 (PyTorch ``momentum=0.01``); convs initialized as Keras'
    ``he_normal`` (truncated normal, ``stddev = sqrt(2 / fan_in) / .8796``, cut at 2
    std), the classifier as ``glorot_uniform``, all biases zero, BN scale 1, shift 0.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 32, 64, 64, 128), num_classes: int = 10):
        super().__init__()
        channels = 1
        for i, width in enumerate(widths, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(channels, width, 3, padding=1, bias=True))
            setattr(
                self,
                f"bn{i}",
                nn.BatchNorm2d(width, eps=KERAS_BN_EPSILON, momentum=1 - KERAS_BN_MOMENTUM),
            )
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(channels, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                std = math.sqrt(2.0 / fan_in) / TRUNCATED_NORMAL_STDDEV_FIX
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    def block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block(2, self.block(1, x)))
        x = self.pool(self.block(4, self.block(3, x)))
        x = self.block(5, x)
        return self.fc(x.mean(dim=(2, 3)))

    def widths(self) -> dict[str, int]:
        return {name: int(getattr(self, name).out_channels) for name in CONV_NAMES}


def keras_param_count(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameters counted as Keras does: BN moving mean/var included."""
    trainable = sum(p.numel() for p in model.parameters())
    stats = sum(
        m.running_mean.numel() + m.running_var.numel()
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    )
    return trainable + stats, trainable


def check_port(model: FashionCNN, layers: list[dict[str, Any]], dense: dict[str, int]) -> dict:
    """Checks the port against the Keras model's layers, one by one; raises on a mismatch."""
    by_name = {spec["name"]: spec for spec in layers}
    expected_order = ["input"]
    for i in range(1, 6):
        expected_order += [f"conv{i}", f"bn{i}", f"relu{i}"]
        if i in (2, 4):
            expected_order.append(f"pool{i // 2}")
    expected_order += ["avgpool", "fc"]
    names = [spec["name"] for spec in layers]
    if names != expected_order:
        raise AssertionError(f"Keras layers {names} != the port's {expected_order}")
    problems = []

    def expect(name: str, key: str, value: Any) -> None:
        if by_name[name].get(key) != value:
            problems.append(f"{name}.{key}: Keras {by_name[name].get(key)!r}, port {value!r}")

    for i in range(1, 6):
        conv, bn = getattr(model, f"conv{i}"), getattr(model, f"bn{i}")
        expect(f"conv{i}", "class_name", "Conv2D")
        expect(f"conv{i}", "filters", conv.out_channels)
        expect(f"conv{i}", "kernel_size", list(conv.kernel_size))
        expect(f"conv{i}", "strides", list(conv.stride))
        expect(f"conv{i}", "padding", "same" if conv.padding == (1, 1) else conv.padding)
        expect(f"conv{i}", "use_bias", conv.bias is not None)
        expect(f"conv{i}", "activation", "linear")
        expect(f"conv{i}", "kernel_initializer", "HeNormal")
        expect(f"conv{i}", "bias_initializer", "Zeros")
        expect(f"bn{i}", "class_name", "BatchNormalization")
        expect(f"bn{i}", "epsilon", bn.eps)
        if not math.isclose(by_name[f"bn{i}"]["momentum"], 1 - bn.momentum, rel_tol=1e-9):
            problems.append(
                f"bn{i}.momentum: Keras {by_name[f'bn{i}']['momentum']}, port "
                f"{bn.momentum} (PyTorch convention)"
            )
        expect(f"bn{i}", "center", True)
        expect(f"bn{i}", "scale", True)
        expect(f"relu{i}", "class_name", "ReLU")
        expect(f"conv{i}", "params", conv.weight.numel() + conv.bias.numel())
        expect(f"bn{i}", "params", 4 * bn.num_features)
    for name in ("pool1", "pool2"):
        expect(name, "class_name", "MaxPooling2D")
        expect(name, "pool_size", [2, 2])
        expect(name, "padding", "valid")
    expect("avgpool", "class_name", "GlobalAveragePooling2D")
    expect("fc", "class_name", "Dense")
    expect("fc", "units", model.fc.out_features)
    expect("fc", "use_bias", True)
    expect("fc", "kernel_initializer", "GlorotUniform")
    expect("fc", "bias_initializer", "Zeros")
    expect("fc", "params", model.fc.weight.numel() + model.fc.bias.numel())
    if problems:
        raise AssertionError("the PyTorch port differs from fashion_cnn: " + "; ".join(problems))
    total, trainable = keras_param_count(model)
    if (total, trainable) != (dense["params"], dense["trainable_params"]):
        raise AssertionError(
            f"parameters: port {total} ({trainable} trainable), Keras {dense['params']} "
            f"({dense['trainable_params']} trainable)"
        )
    return {"params": total, "trainable_params": trainable, "layers_checked": len(layers)}


# --------------------------------------------------------------------------- #
# The protocol: cosine-decay Adam phases, BN re-estimation, evaluation
# --------------------------------------------------------------------------- #


def cosine_factor(step: int, total: int, alpha: float = 0.01) -> float:
    """``keras.optimizers.schedules.CosineDecay(lr, total, alpha)(step) / lr``."""
    fraction = min(step, total) / max(total, 1)
    return (1 - alpha) * 0.5 * (1 + math.cos(math.pi * fraction)) + alpha


def train_phase(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    orders: np.ndarray,
    config: CnnConfig,
) -> None:
    """One phase (``len(orders)`` epochs): a fresh Adam whose cosine decay spans it.

    Adam as Keras' defaults (beta 0.9 / 0.999, epsilon 1e-7; Keras adds epsilon to the
    uncorrected ``sqrt(v)``, PyTorch to the corrected one: a difference of
    ``epsilon / sqrt(1 - beta2^t)``, negligible at 1e-7).
    """
    if len(orders) == 0:
        return
    steps_per_epoch = math.ceil(len(y) / config.batch_size)
    total = len(orders) * steps_per_epoch
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, eps=KERAS_ADAM_EPSILON)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, total))
    model.train()
    for order in orders:
        for index in batches(len(y), config.batch_size, order):
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, bn_batches: list[torch.Tensor]) -> None:
    """As ``tffp.recalibrate_batchnorm(reset=True)``: each BN's statistics become the
    average over the fixed batches of the per-batch mean and biased variance of its
    input, the model running in training mode (batch statistics)."""
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    sums = {id(m): [0.0, 0.0] for m in layers}

    def hook(module, inputs):
        x = inputs[0].double()
        sums[id(module)][0] = sums[id(module)][0] + x.mean(dim=(0, 2, 3))
        sums[id(module)][1] = sums[id(module)][1] + x.var(dim=(0, 2, 3), unbiased=False)

    handles = [m.register_forward_pre_hook(hook) for m in layers]
    was_training = model.training
    try:
        model.train()
        for xb in bn_batches:
            model(xb)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for m in layers:
        mean_sum, var_sum = sums[id(m)]
        m.running_mean.copy_((mean_sum / len(bn_batches)).float())
        m.running_var.copy_((var_sum / len(bn_batches)).float())


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    for index in batches(len(y), 256):
        correct += int((model(x[index]).argmax(dim=1) == y[index]).sum())
    return correct / len(y)


def evaluate(model, bn_batches, x_test, y_test) -> float:
    """Test accuracy after re-estimating the BN statistics on the fixed batches."""
    recalibrate_batchnorm(model, bn_batches)
    return accuracy(model, x_test, y_test)


# --------------------------------------------------------------------------- #
# Torch-Pruning
# --------------------------------------------------------------------------- #


def make_pruner(name: str, model: FashionCNN, ratios: dict[str, float], ignored: list[str]):
    """The Torch-Pruning pruner of ``name`` cutting each layer of ``ratios`` by its ratio."""
    importance, pruner_class = {
        "l1": (lambda: tp.importance.MagnitudeImportance(p=1), tp.pruner.MagnitudePruner),
        "taylor": (lambda: tp.importance.TaylorImportance(), tp.pruner.MagnitudePruner),
        "bn_scale": (lambda: tp.importance.BNScaleImportance(), tp.pruner.BNScalePruner),
        "group_norm": (
            lambda: tp.importance.GroupMagnitudeImportance(p=2),
            tp.pruner.GroupNormPruner,
        ),
    }[name]
    return pruner_class(
        model,
        torch.zeros(1, 1, 28, 28),
        importance=importance(),
        pruning_ratio=0.0,
        pruning_ratio_dict={getattr(model, layer): ratio for layer, ratio in ratios.items()},
        ignored_layers=[getattr(model, layer) for layer in ignored] + [model.fc],
        global_pruning=False,
        round_to=None,
    )


def prune(
    name: str,
    model: FashionCNN,
    ratios: dict[str, float],
    ignored: list[str],
    grad_batches: list[tuple[torch.Tensor, torch.Tensor]],
) -> float:
    """Prunes ``model`` in place with pruner ``name``; returns the seconds it took."""
    model.eval()
    started = time.perf_counter()
    pruner = make_pruner(name, model, ratios, ignored)
    if name == "taylor":  # |w * dL/dw| needs the gradients of a few training batches
        model.train()
        model.zero_grad(set_to_none=True)
        for xb, yb in grad_batches:
            F.cross_entropy(model(xb), yb).backward()
        model.eval()
    pruner.step()
    seconds = time.perf_counter() - started
    model.zero_grad(set_to_none=True)
    return seconds


def settings_key(config: CnnConfig, seed: int) -> str:
    text = json.dumps({"config": config.recorded(), "seed": seed}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def pretrained(
    config: CnnConfig, seed: int, data: dict, prepared: dict, checkpoint_dir: Path
) -> tuple[FashionCNN, float, float]:
    """The dense port trained ``pretrain_epochs`` (cached per settings and seed).

    Returns the model, its accuracy (BN re-estimated) and the training seconds (0 when
    read from the cache).
    """
    path = checkpoint_dir / f"pretrained_seed{seed}_{settings_key(config, seed)}.pt"
    torch.manual_seed(seed)
    model = FashionCNN(tuple(prepared["dense_widths"][n] for n in CONV_NAMES))
    check_port(model, prepared["layers"], prepared["dense"])
    if path.exists():
        saved = torch.load(path, weights_only=True)
        model.load_state_dict(saved["state_dict"])
        return model, float(saved["accuracy"]), 0.0
    started = time.time()
    train_phase(model, data["x"], data["y"], data["orders"][: config.pretrain_epochs], config)
    seconds = time.time() - started
    acc = evaluate(model, data["bn"], data["x_test"], data["y_test"])
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "accuracy": acc}, path)
    return model, acc, seconds


def cnn(request: dict[str, Any]) -> dict[str, Any]:
    """Part (b) for one seed and the requested pruners; appends one record per pruner."""
    config = CnnConfig.from_json(request["config"])
    prepared = request["prepared"]
    seed = int(request["seed"])
    torch.set_num_threads(config.threads)
    x, y = load_split("train", config.train_limit)
    x_test, y_test = load_split("test", config.test_limit)
    orders = np.load(prepared["orders"][str(seed)]["path"])
    if orders.shape != (config.epochs, len(y)):
        raise AssertionError(f"orders of shape {orders.shape} for {config.epochs} epochs")
    bn = [x[i] for i in list(batches(len(y), config.batch_size))[: config.bn_steps]]
    if sum(len(b) for b in bn) != prepared["bn"]["bn_examples"]:
        raise AssertionError("BN batches differ from the Keras side's")
    grad = [(x[i], y[i]) for i in list(batches(len(y), config.batch_size))[: config.taylor_batches]]
    data = {"x": x, "y": y, "x_test": x_test, "y_test": y_test, "orders": orders, "bn": bn}
    dense_widths, target = prepared["dense_widths"], prepared["target_widths"]
    ratios = pruning_ratios(dense_widths, target)
    example = torch.zeros(1, 1, 28, 28)
    base, base_acc, pretrain_s = pretrained(
        config, seed, data, prepared, Path(request["checkpoint_dir"])
    )
    tp_dense_macs, _ = tp.utils.count_ops_and_params(base, example)
    done = []
    for name in request["pruners"]:
        started = time.time()
        model = copy.deepcopy(base)
        prune_s = prune(name, model, ratios, list(config.ignored_layers), grad)
        if model.widths() != target:
            raise AssertionError(f"{name}: widths {model.widths()} != ours {target}")
        params, trainable = keras_param_count(model)
        if params != prepared["compact"]["params"]:
            raise AssertionError(
                f"{name}: {params} parameters, Keras compact model {prepared['compact']['params']}"
            )
        tp_macs, _ = tp.utils.count_ops_and_params(model, example)
        after_cut = evaluate(model, bn, x_test, y_test)
        train_phase(model, x, y, orders[config.pretrain_epochs :], config)
        final = evaluate(model, bn, x_test, y_test)
        record = {
            "pruner": name,
            "seed": seed,
            "accuracy": final,
            "accuracy_after_cut": after_cut,
            "accuracy_pretrained": base_acc,
            "widths": model.widths(),
            "dense_widths": dense_widths,
            "params": params,
            "trainable_params": trainable,
            "macs": prepared["compact"]["macs"],
            "macs_ratio": prepared["compact"]["macs_ratio"],
            "tp_macs": int(tp_macs),
            "tp_macs_dense": int(tp_dense_macs),
            "tp_macs_ratio": float(tp_macs / tp_dense_macs),
            "seconds_prune": prune_s,
            "seconds": round(time.time() - started, 1),
            "seconds_pretrain": round(pretrain_s, 1),
            "config": config.recorded(),
            "versions": versions(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        append_record(Path(request["runs_path"]), record)
        done.append(name)
        print(
            f"   seed {seed} {name}: after cut {after_cut:.4f}, fine-tuned {final:.4f} "
            f"(pretrained {base_acc:.4f}), TP MACs ratio {record['tp_macs_ratio']:.3f}, "
            f"{record['seconds']:.0f} s",
            flush=True,
        )
    return {"done": done, "seed": seed, "pretrain_seconds": pretrain_s}


def versions() -> dict[str, str]:
    """Installed versions (Torch-Pruning 1.6.1's ``tp.__version__`` still says 1.6.0)."""
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "torchvision", "torch-pruning")}


# --------------------------------------------------------------------------- #
# Part (a): ResNet-50
# --------------------------------------------------------------------------- #


def resnet50(request: dict[str, Any]) -> dict[str, Any]:
    """Times MagnitudePruner (L1) on a fresh torchvision ResNet-50 per call, in place.

    Each timed call builds the dependency graph (the pruner's constructor) and prunes
    (``step``); building the model is not timed. One untimed warm-up call first.
    """
    import torchvision

    config = ResNetConfig(**request["config"])
    torch.set_num_threads(config.threads)
    example = torch.randn(1, 3, 224, 224)

    def fresh():
        model = torchvision.models.resnet50(weights=None)
        model.eval()
        return model

    def prune_once(model):
        pruner = tp.pruner.MagnitudePruner(
            model,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=1 - config.keep_ratio,
            ignored_layers=[model.fc],
        )
        pruner.step()
        return model

    started = time.perf_counter()
    model = fresh()
    build_s = time.perf_counter() - started
    macs_before, params_before = tp.utils.count_ops_and_params(model, example)
    warm = time.perf_counter()
    prune_once(model)
    warmup_s = time.perf_counter() - warm
    seconds = []
    for _ in range(config.repeats):
        model = fresh()
        start = time.perf_counter()
        prune_once(model)
        seconds.append(time.perf_counter() - start)
    macs_after, params_after = tp.utils.count_ops_and_params(model, example)
    with torch.no_grad():
        out = model(example)
    return {
        "seconds": seconds,
        "warmup_s": warmup_s,
        "build_s": build_s,
        "macs_before": int(macs_before),
        "macs_after": int(macs_after),
        "macs_ratio": float(macs_after / macs_before),
        "params_before": int(params_before),
        "params_after": int(params_after),
        "params_ratio": float(params_after / params_before),
        "output_shape": list(out.shape),
        "call": "tp.pruner.MagnitudePruner(resnet50(weights=None), MagnitudeImportance(p=1), "
        f"pruning_ratio={1 - config.keep_ratio:.2f}, ignored_layers=[fc]).step()",
        "versions": versions(),
    }


COMMANDS = {"cnn": cnn, "resnet50": resnet50}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--request", required=True, help="JSON file with the arguments")
    parser.add_argument("--response", required=True, help="where to write the JSON result")
    args = parser.parse_args(argv)
    request = json.loads(Path(args.request).read_text())
    response = COMMANDS[args.command](request)
    Path(args.response).write_text(json.dumps(response, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
