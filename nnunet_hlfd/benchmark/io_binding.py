"""ONNX Runtime's IO binding against host copies, for one bundle's network on one device (a step of the GPU check).

``OnnxNetwork`` binds the tile's memory and the logits' tensor to the session (on CUDA both stay on the GPU); the
other path copies the tile to a NumPy array on the host, runs, and copies the logits back. Both are timed on the
same random tiles, in turns, and their logits compared.

    python -m nnunet_hlfd.benchmark.io_binding BUNDLE --device cuda
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(bundle: Path, device: torch.device, batch: int = 2, repeats: int = 10) -> dict:
    """Milliseconds per network call with and without IO binding (medians), and their largest logit difference."""
    from nnunet_hlfd.deploy.onnx_predictor import load_bundle_predictor

    predictor = load_bundle_predictor(bundle, device=device, allow_tqdm=False, use_mirroring=False)
    network = predictor.network
    channels = len(predictor.dataset_json["channel_names"])
    patch = [int(p) for p in predictor.configuration_manager.patch_size]
    tiles = torch.randn((batch, channels, *patch), generator=torch.Generator().manual_seed(0)).to(device)
    times: dict[bool, list[float]] = {True: [], False: []}
    outputs = {}
    for turn in range(repeats + 1):  # the first turn is untimed: the providers' set-up
        for bound in (True, False):
            network.io_binding = bound
            _synchronize(device)
            start = time.perf_counter()
            outputs[bound] = network(tiles)
            _synchronize(device)
            if turn:
                times[bound].append(time.perf_counter() - start)
    network.io_binding = True
    median = {bound: 1000 * sorted(values)[len(values) // 2] for bound, values in times.items()}
    return {
        "device": device.type,
        "providers": next(iter(network.sessions.values())).get_providers(),
        "batch": [batch, channels, *patch],
        "ms_bound": median[True],
        "ms_host": median[False],
        "max_abs_difference": (outputs[True] - outputs[False]).abs().max().item(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--batch", type=int, default=2, help="tiles per call (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per path (default: %(default)s)")
    args = parser.parse_args(argv)
    result = measure(args.bundle, torch.device(args.device), args.batch, args.repeats)
    print("| device | providers | batch | IO binding (ms) | host copies (ms) | host / bound | max |Δ logit| |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {result['device']} | {', '.join(result['providers'])} | {'×'.join(map(str, result['batch']))} | "
          f"{result['ms_bound']:.2f} | {result['ms_host']:.2f} | {result['ms_host'] / result['ms_bound']:.2f} | "
          f"{result['max_abs_difference']:.2g} |")  # fmt: skip
    # the same session on the same tiles: the logits must agree, or binding handed over the wrong memory
    return 0 if result["max_abs_difference"] <= 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
