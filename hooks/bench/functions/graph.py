# SPDX-License-Identifier: GPL-2.0-or-later
"""graph: PageRank on a generated graph (python3-igraph).

prepare() writes a Barabasi-Albert graph (200 000 vertices, 5 edges each,
seed 1) once as an edge list to the cache; every instance reads it after
start and keeps it in memory.  An invocation runs PageRank with a damping
factor drawn from the seed and returns the top-5 vertices.
"""

import os

EDGES = "graph-ba-200k-seed1.txt"


def prepare(cache_dir: str) -> str:
    path = os.path.join(cache_dir, EDGES)
    if os.path.exists(path):
        return path
    import random
    import igraph
    random.seed(1)
    igraph.set_random_number_generator(random)
    g = igraph.Graph.Barabasi(200_000, 5)
    tmp = f"{path}.{os.getpid()}.tmp"
    g.write_edgelist(tmp)
    os.rename(tmp, path)
    return path


def cold_start(cache_dir: str):
    import igraph
    g = igraph.Graph.Read_Edgelist(os.path.join(cache_dir, EDGES), directed=False)
    degree = g.degree()

    def invoke(seed: int):
        damping = 0.80 + (seed % 10) / 100
        pr = g.pagerank(damping=damping)
        top = sorted(range(len(pr)), key=pr.__getitem__, reverse=True)[:5]
        return {"damping": damping, "top5": top, "degree": [degree[v] for v in top]}

    return invoke
