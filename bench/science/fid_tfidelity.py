"""The second feature path: torch-fidelity 0.4.0's own Inception extractor (Apache-2.0),
run where it can be imported, to hold `bench.science.fid` against it.

``import torch_fidelity`` fails where torchvision does not load (its package ``__init__``
imports the CLIP and DINOv2 extractors); its Inception module needs only torch and three
torch-only siblings, so `_torch_fidelity_module` loads that module alone under an empty
stand-in package and removes what it added to ``sys.modules``. Without torch-fidelity's own
weight file (downloaded at first use), the weights come from the pinned TorchScript network,
mapped one to one onto its layers (`torchscript_to_torch_fidelity`).
Install it without its dependencies: ``pip install --no-deps torch-fidelity==0.4.0``.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bench.api.errors import DataError
from bench.science.fid import FIDUnavailable, InceptionFeatures, _check_images

__all__ = ["TF_WEIGHTS_FILE", "torch_fidelity_features", "torchscript_to_torch_fidelity"]

log = logging.getLogger(__name__)

#: torch-fidelity's weight file (no full hash is published to pin; pytorch-fid's differently
#: laid out file carries the same suffix, so the suffix is not this file's SHA-256 prefix)
TF_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
_TOP = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
        "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
      "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
      "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
      "tower.conv_2": "branch3x3dbl_3"}
_SUF = ["", "_1", "_2", "_3", "_4"]
_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
      "tower.conv_2": "branch7x7_3", "tower_2.conv": "branch_pool",
      **{f"tower_1.conv{s}": f"branch7x7dbl_{i + 1}" for i, s in enumerate(_SUF)}}
_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
      **{f"tower_1.conv{s}": f"branch7x7x3_{i + 1}" for i, s in enumerate(_SUF[:4])}}
_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
      "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
      "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
      "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_MIXED = list(zip(["mixed"] + [f"mixed_{i}" for i in range(1, 11)],
                  ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                   "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"],
                  [_A] * 3 + [_B] + [_C] * 4 + [_D] + [_E] * 2, strict=True))


def torchscript_to_torch_fidelity(ts_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The TorchScript network's state dict under torch-fidelity's ``FeatureExtractorInceptionV3``
    names: conv weight -> conv.weight, (beta, mean, var) -> bn.(bias, running_mean,
    running_var), bn.weight = 1 (TF's batch norm has no scale). The 1008-way ``fc`` layer is
    absent from the TorchScript and set to NaN: it is unused for the pool3 features, and NaN
    would show at once if it were used."""
    names = {f"net.layers.{k}": v for k, v in _TOP.items()}
    for ts, tf, block in _MIXED:
        names.update({f"net.layers.{ts}.{k}": f"{tf}.{v}" for k, v in block.items()})
    out: dict[str, Tensor] = {}
    for src, dst in names.items():
        w = ts_state[f"{src}.weight"]
        out.update({f"{dst}.conv.weight": w, f"{dst}.bn.weight": torch.ones(w.shape[0]),
                    f"{dst}.bn.bias": ts_state[f"{src}.beta"],
                    f"{dst}.bn.running_mean": ts_state[f"{src}.mean"],
                    f"{dst}.bn.running_var": ts_state[f"{src}.var"],
                    f"{dst}.bn.num_batches_tracked": torch.tensor(0)})
    if 4 * len(names) != len(ts_state):
        raise DataError(f"unexpected TorchScript layout: {len(ts_state)} tensors, "
                        f"{4 * len(names)} mapped")
    out["fc.weight"] = torch.full((1008, 2048), float("nan"))
    out["fc.bias"] = torch.full((1008,), float("nan"))
    return out


def _torch_fidelity_module(name: str = "feature_extractor_inceptionv3"):
    """A torch-only module of torch-fidelity (``torch_fidelity.<name>``). Its package ``__init__``
    also imports the CLIP/DINOv2 extractors, hence torchvision; where that import fails, the
    module (which needs only torch and three torch-only sibling modules) is loaded under an
    empty package shell, and the shell is removed from ``sys.modules`` again."""
    import importlib.util

    def ours(name: str) -> bool:
        return name == "torch_fidelity" or name.startswith("torch_fidelity.")

    saved = {k: v for k, v in sys.modules.items() if ours(k)}

    def restore() -> None:  # drop what a failed import or the shell left behind
        for k in [k for k in sys.modules if ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)

    try:
        return importlib.import_module(f"torch_fidelity.{name}")
    except ImportError as exc:
        restore()
        spec = importlib.util.find_spec("torch_fidelity")
        if spec is None or not spec.submodule_search_locations:
            raise FIDUnavailable("torch-fidelity is not installed (pip install --no-deps "
                                 "torch-fidelity==0.4.0)") from exc
        log.info("import torch_fidelity failed (%s); loading torch_fidelity.%s alone", exc, name)
    shell = types.ModuleType("torch_fidelity")
    shell.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = shell
    try:
        return importlib.import_module(f"torch_fidelity.{name}")
    finally:
        restore()


def torch_fidelity_features(images: np.ndarray, *, inception: Path | None = None,
                            weights: Path | None = None, data_dir: Path | None = None,
                            batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Features (n, 2048) float64 by torch-fidelity's own ``FeatureExtractorInceptionV3``
    (its resize, normalisation and network code) on uint8 images (n, C, H, W).

    Weights: ``weights`` (torch-fidelity's ``TF_WEIGHTS_FILE``), else that file in
    ``<data_dir>/fid/`` or the torch hub cache, else the TorchScript's tensors mapped onto
    its layers (`torchscript_to_torch_fidelity`). Tensors are read with
    ``torch.load(weights_only=True)`` and handed over in a private temporary file.

    Raises:
        FIDUnavailable: torch-fidelity is not installed, or no weights.
    """
    _check_images(images)
    module = _torch_fidelity_module()
    if weights is None:
        roots = [Path(data_dir) / "fid"] if data_dir is not None else []
        roots.append(Path(torch.hub.get_dir()) / "checkpoints")
        weights = next((r / TF_WEIGHTS_FILE for r in roots if (r / TF_WEIGHTS_FILE).is_file()),
                       None)
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        source = str(weights)
    else:
        ts = InceptionFeatures(inception, data_dir=data_dir)
        state, source = torchscript_to_torch_fidelity(ts.net.state_dict()), str(ts.path)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, Path(tmp) / "w.pth")
        net = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                 feature_extractor_weights_path=str(
                                                     Path(tmp) / "w.pth"))
    log.info("torch-fidelity extractor with weights from %s", source)
    net = net.to(device)
    out = np.empty((len(images), 2048), dtype=np.float64)
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(device)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            out[i:i + len(x)] = net(x)[0].double().cpu().numpy()
    return out
