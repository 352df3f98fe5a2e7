"""A pipeline folder's model_index.json, read and checked without any library: a JSON object whose
`_class_name` names the pipeline and whose other entries pair a library with a class,
e.g. "transformer": ["diffusers", "FluxTransformer2DModel"]. Anything else is one line, not a
traceback from inside from_pretrained."""

import json
from pathlib import Path
from typing import Optional, Tuple

# libraries whose classes a model folder may name without shipping code (trust_remote_code covers the rest)
LIBRARIES = ("diffusers", "transformers")


def read_model_index(path: Path, where: str) -> Tuple[Optional[dict], Optional[str]]:
    """(the index, None), or (None, why it cannot be used) with `where` naming the config key."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return None, (f"{where}: {path} cannot be read as JSON ({type(error).__name__}: {str(error)[:120]}); "
                      "fix: copy the model folder again (save_pretrained or `hf download` write it whole)")
    if not isinstance(index, dict):
        return None, (f"{where}: {path} holds a {type(index).__name__}, not the object a pipeline folder has "
                      "(\"_class_name\" and one entry per component); fix: copy the model folder again")
    for name, value in index.items():
        if name.startswith("_"):
            continue
        pair = isinstance(value, list) and len(value) == 2 and all(v is None or isinstance(v, str) for v in value)
        if not pair:
            return None, (f"{where}: {path}: component {name!r} is {json.dumps(value)[:80]}, not a [library, class] "
                          "pair such as [\"diffusers\", \"AutoencoderKL\"]; fix: copy the model folder again")
    return index, None


def unknown_classes(index: dict) -> list:
    """The (component, library, class) entries naming a library qco knows and no class of it."""
    import importlib

    unknown = []
    for name, value in index.items():
        if name.startswith("_") or value[0] not in LIBRARIES or value[1] is None:
            continue
        cls = getattr(importlib.import_module(value[0]), value[1], None)
        if not isinstance(cls, type):
            unknown.append((name, value[0], value[1]))
    return unknown
