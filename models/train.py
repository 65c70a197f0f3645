"""Deterministic training and ONNX export of the reference models.

    python -m models.train [iris_mlp] [digits_cnn]

Full-batch Adam on one CPU thread with fixed seeds, so a rerun reproduces the
same weights. Writes ``weights.pt``, ``model.onnx`` and ``metrics.json`` (float
accuracy on the held-out split) under ``models/artifacts/<name>/``.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from models.nets import NETS
from models.registry import REFERENCE_MODELS, SPLIT_SEED, TEST_FRACTION, load_split

HYPER = {
    "iris_mlp": {"epochs": 400, "lr": 0.02, "weight_decay": 1e-4},
    "digits_cnn": {"epochs": 400, "lr": 0.01, "weight_decay": 1e-4},
}
ONNX_OPSET = 18  # the newest opset EZKL's tract backend is tested against


def train(name: str) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    ref = REFERENCE_MODELS[name]
    x_train, x_test, y_train, y_test = load_split(name)
    net = NETS[name]()
    hp = HYPER[name]
    opt = torch.optim.Adam(net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    net.train()
    for _ in range(hp["epochs"]):
        opt.zero_grad()
        logits, _ = net(xt)
        nn.functional.cross_entropy(logits, yt).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        _, pred_train = net(xt)
        _, pred_test = net(torch.from_numpy(x_test))
    metrics = {
        "model": name,
        "dataset": f"sklearn.datasets.load_{ref.dataset}",
        "split": {"test_fraction": TEST_FRACTION, "seed": SPLIT_SEED, "stratified": True},
        "train_samples": len(y_train),
        "test_samples": len(y_test),
        "train_accuracy": float((pred_train.numpy() == y_train).mean()),
        "test_accuracy": float((pred_test.numpy() == y_test).mean()),
        "hyperparameters": hp,
        "onnx_opset": ONNX_OPSET,
    }
    ref.dir.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), ref.weights_path)
    export_onnx(net, ref.onnx_path, example=torch.from_numpy(x_test[:1]))
    ref.metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def export_onnx(net: nn.Module, path, example: torch.Tensor) -> None:
    """Export with a dynamic batch axis; EZKL pins it to 1, the server batches."""
    torch.onnx.export(
        net,
        (example,),
        str(path),
        input_names=["input"],
        output_names=["logits", "label"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "label": {0: "batch"}},
        opset_version=ONNX_OPSET,
        dynamo=False,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(REFERENCE_MODELS))
    args = parser.parse_args(argv)
    for name in args.names:
        m = train(name)
        print(f"{name}: train {m['train_accuracy']:.4f}, held-out {m['test_accuracy']:.4f}"
              f" ({m['test_samples']} samples)")


if __name__ == "__main__":
    main()
