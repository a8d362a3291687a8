# SPDX-License-Identifier: GPL-2.0-or-later
"""imagerec: image recognition with a ResNet-50 (python3-torch, python3-torchvision).

The paper's function.  Pretrained weights cannot be downloaded, so
prepare() draws them once from a fixed seed on the host and saves them in
the cache directory (resnet50-seed0.pt, ~100 MB); every instance builds the
network and loads that file with torch.load after its container started,
as a real function loads its model.  An invocation classifies an image
generated from the invocation's seed (SIZE x SIZE, default 96, env
UPM_BENCH_IMAGE_SIZE) and returns the top-5 classes.
"""

import os

WEIGHTS = "resnet50-seed0.pt"


def prepare(cache_dir: str) -> str:
    """Host side, once: the deterministic weights file.  Returns its path."""
    path = os.path.join(cache_dir, WEIGHTS)
    if os.path.exists(path):
        return path
    import torch
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save(model.state_dict(), tmp)
    os.rename(tmp, path)
    return path


def cold_start(cache_dir: str):
    import torch
    import torchvision
    torch.set_num_threads(int(os.environ.get("UPM_BENCH_THREADS", "1")))
    size = int(os.environ.get("UPM_BENCH_IMAGE_SIZE", "96"))
    model = torchvision.models.resnet50(weights=None)
    model.load_state_dict(torch.load(os.path.join(cache_dir, WEIGHTS)))
    model.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    def invoke(seed: int):
        g = torch.Generator().manual_seed(seed)
        # a picture-like input: smooth colour gradients plus noise, in [0, 1]
        base = torch.rand((3, 8, 8), generator=g)
        img = torch.nn.functional.interpolate(base[None], size=(size, size), mode="bilinear",
                                              align_corners=False)[0]
        img = (img + 0.1 * torch.rand((3, size, size), generator=g)).clamp(0, 1)
        with torch.no_grad():
            probs = torch.softmax(model(((img - mean) / std)[None]), dim=1)[0]
        top = torch.topk(probs, 5)
        return {"top5": [int(i) for i in top.indices], "p": [round(float(p), 6) for p in top.values]}

    return invoke
