"""Package layers and test macros, for every BUILD file.

LAYERS lists the Python packages from the bottom up. A package may import
(and depend on) packages of lower layers and of its own layer, never of a
higher one; packages of one layer must not import each other in a cycle.
This list is the single declaration of the layers: BUILD files turn it into
Bazel visibility (`layer_visibility`), and //tests:layers_test checks every
module's imports against it. Tests and benchmarks sit above every layer.
"""

LAYERS = [
    ["//data_prep"],
    ["//workers/secagg"],
    ["//workers"],
    ["//tff_pipeline/core"],
    ["//tff_pipeline/tasks"],
    ["//tff_pipeline/secagg"],
    ["//tff_pipeline/aggregation"],
    ["//tff_pipeline/learning"],
    ["//tff_pipeline", "//tff_pipeline/dashboard"],
]

# Above every layer: they may use any package.
OUTSIDE_LAYERS = ["//tests", "//bench"]

def _layer_of(package):
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    fail("package %s is not in LAYERS (build_defs.bzl)" % package)

def layer_visibility(package):
    """Visibility for a package's targets: its own layer and every higher one."""
    index = _layer_of(package)
    visible = []
    for layer in LAYERS[index:]:
        visible += [p + ":__pkg__" for p in layer]
    return visible + [p + ":__subpackages__" for p in OUTSIDE_LAYERS]

def tff_py_test(name, size = "medium", deps = [], **kwargs):
    """py_test(name) of <name>.py, run with the .venv interpreter (PY3)."""
    native.py_test(
        name = name,
        size = size,
        srcs = [name + ".py"],
        python_version = "PY3",
        srcs_version = "PY3",
        deps = deps,
        **kwargs
    )
