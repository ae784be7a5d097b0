#!/usr/bin/env python3
"""The module layering of src/ (docs/development.md, src/lib.rs): a module imports only from its own
folder or from lower layers, and no two modules import each other in a circle. Fails listing
every offending `crate::` path. Run by scripts/test-one.sh."""
import glob
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
# lowest first; mqtt (the libmosquitto wrapper) and pg (PostgreSQL glue) do not import each other
LAYER = {"pure": 0, "pg": 1, "mqtt": 1, "shmem": 2, "data": 3, "backend": 4, "worker": 5}


def module_of(path):
    m = os.path.relpath(path, ROOT)[:-3].replace("/mod", "").replace("/", "::")
    return "crate" if m == "lib" else m


files = glob.glob(os.path.join(ROOT, "**", "*.rs"), recursive=True)
modules = {module_of(f): f for f in files}
graph, problems = {}, []
for m, f in modules.items():
    deps = set()
    for path in re.findall(r"crate::([a-z_]+(?:::[a-z_]+)?)", open(f).read()):
        deps.add(path if path in modules else path.split("::")[0])
    deps.discard(m)
    graph[m] = {d for d in deps if d in modules}
    top = m.split("::")[0]
    for d in sorted(deps):
        dt = d.split("::")[0]
        if top in LAYER and dt in LAYER and dt != top and LAYER[dt] >= LAYER[top]:
            problems.append(f"{m} imports {d}: {dt} is not below {top}")

state = {}


def visit(u, stack):
    state[u] = 1
    stack.append(u)
    for v in sorted(graph[u]):
        if state.get(v) == 1:
            problems.append("cycle: " + " -> ".join(stack[stack.index(v):] + [v]))
        elif v not in state:
            visit(v, stack)
    stack.pop()
    state[u] = 2


for m in sorted(graph):
    if m not in state:
        visit(m, [])
print("\n".join(problems) or f"layers: {len(modules)} modules, no upward import, no cycle")
sys.exit(1 if problems else 0)
