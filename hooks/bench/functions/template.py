# SPDX-License-Identifier: GPL-2.0-or-later
"""template: server-side HTML rendering (python3-jinja2).

prepare() writes a product catalogue (50 000 items, seeded) as JSON and a
set of templates to the cache once; every instance loads the catalogue and
compiles the templates after start.  An invocation renders one category
page (the items of the seed's category, with a layout, macros and filters)
and returns its length.
"""

import json
import os

CATALOGUE = "template-catalogue-seed1.json"
TEMPLATES = {
    "base.html": "<!doctype html><html><head><title>{% block title %}{% endblock %}</title></head>"
                 "<body>{% block body %}{% endblock %}<footer>{{ footer }}</footer></body></html>",
    "macros.html": "{% macro item(p) %}<li class='{{ p.tags|join(' ') }}'><b>{{ p.name|title }}</b> "
                   "{{ '%.2f'|format(p.price) }} EUR <i>{{ p.description|truncate(60) }}</i></li>{% endmacro %}",
    "category.html": "{% extends 'base.html' %}{% import 'macros.html' as m %}"
                     "{% block title %}{{ category }} ({{ items|length }}){% endblock %}"
                     "{% block body %}<h1>{{ category|upper }}</h1><ul>{% for p in items|sort(attribute='price') %}"
                     "{{ m.item(p) }}{% endfor %}</ul>{% endblock %}",
}


def prepare(cache_dir: str) -> str:
    path = os.path.join(cache_dir, CATALOGUE)
    if not os.path.exists(path):
        import random
        rnd = random.Random(1)
        words = ["red", "blue", "fast", "quiet", "smart", "steel", "wood", "solar", "mini", "max", "pro", "eco"]
        items = [{"id": i, "name": " ".join(rnd.choice(words) for _ in range(3)), "category": f"cat{i % 200}",
                  "price": round(rnd.uniform(1, 500), 2), "tags": rnd.sample(words, 3),
                  "description": " ".join(rnd.choice(words) for _ in range(30))} for i in range(50_000)]
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(items, f)
        os.rename(tmp, path)
    tdir = os.path.join(cache_dir, "templates")
    os.makedirs(tdir, exist_ok=True)
    for name, text in TEMPLATES.items():
        with open(os.path.join(tdir, name), "w") as f:
            f.write(text)
    return path


def cold_start(cache_dir: str):
    import jinja2
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(cache_dir, "templates")),
                             autoescape=True)
    page = env.get_template("category.html")
    with open(os.path.join(cache_dir, CATALOGUE)) as f:
        items = json.load(f)
    by_cat: dict[str, list] = {}
    for p in items:
        by_cat.setdefault(p["category"], []).append(p)

    def invoke(seed: int):
        cat = f"cat{seed % 200}"
        html = page.render(category=cat, items=by_cat[cat], footer=f"request {seed}")
        return {"category": cat, "bytes": len(html)}

    return invoke
