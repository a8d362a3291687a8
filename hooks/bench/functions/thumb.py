# SPDX-License-Identifier: GPL-2.0-or-later
"""thumb: an image thumbnailer (python3-pil).

prepare() writes 8 generated 1600x1200 JPEG photos (seeded) to the cache
once; every instance decodes them after start and keeps the originals in
memory (its working set).  An invocation makes a 320x240 thumbnail of one
of them (LANCZOS, slightly rotated by the seed), encodes it as JPEG and
returns its size.
"""

import io
import os

N_IMAGES = 8


def _name(i: int) -> str:
    return f"thumb-src-{i}.jpg"


def prepare(cache_dir: str) -> str:
    import random
    from PIL import Image, ImageDraw, ImageFilter
    for i in range(N_IMAGES):
        path = os.path.join(cache_dir, _name(i))
        if os.path.exists(path):
            continue
        rnd = random.Random(i)
        img = Image.new("RGB", (1600, 1200), tuple(rnd.randrange(256) for _ in range(3)))
        d = ImageDraw.Draw(img)
        for _ in range(400):
            x, y = rnd.randrange(1600), rnd.randrange(1200)
            r = rnd.randrange(10, 200)
            d.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rnd.randrange(256) for _ in range(3)))
        img = img.filter(ImageFilter.GaussianBlur(3))
        tmp = f"{path}.{os.getpid()}.tmp"
        img.save(tmp, "JPEG", quality=90)
        os.rename(tmp, path)
    return cache_dir


def cold_start(cache_dir: str):
    from PIL import Image
    originals = []
    for i in range(N_IMAGES):
        with Image.open(os.path.join(cache_dir, _name(i))) as im:
            originals.append(im.convert("RGB"))

    def invoke(seed: int):
        src = originals[seed % N_IMAGES]
        im = src.rotate((seed % 7) - 3, resample=Image.BICUBIC).resize((320, 240), Image.LANCZOS)
        out = io.BytesIO()
        im.save(out, "JPEG", quality=85)
        return {"image": seed % N_IMAGES, "bytes": out.tell()}

    return invoke
