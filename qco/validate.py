"""The single-value checks of a composed config: each group's own (in its module of qco/groups/), the keys the
schema lacks, the stores' folders and the path fields. Every problem is collected, so one run reports them all,
each on its own line: key=value, what is allowed, how to fix it.

When each check runs: qco/safety/ before Hydra builds anything (the command line, what it would build and
write); check_values here once the config is composed, before torch is imported, so a mistake is answered at
once; check_names here after it (the names only the libraries can judge); the rules between groups
(qco/rules.py) on the drafted plan; and qco/fit.py once the weights are on disk, before they load."""

import dataclasses
import difflib
import math
from pathlib import Path
from typing import List, Optional

from omegaconf import DictConfig, OmegaConf

from qco.config import Config
from qco.files import inside
from qco.groups.attention import check_attention_names
from qco.groups.cache import check_cache
from qco.groups.compile import check_compile, check_compile_names
from qco.groups.lora import check_lora
from qco.groups.model import check_model, check_model_names
from qco.groups.offload import check_offload
from qco.groups.parallel import check_parallel
from qco.groups.quant import check_quant, check_quant_names
from qco.groups.run import check_run, not_a_number


def check_values(cfg: Config, run_dir: Optional[Path] = None) -> List[str]:
    """Everything that needs no library; `run_dir`: the run's folder, which path fields must lie in (or a store)."""
    problems = unknown_keys(cfg) + check_run(cfg.run, cfg.model) + check_parallel(cfg.parallel, cfg.run.device)
    problems += check_stores(cfg) + (check_paths(cfg, run_dir) if run_dir is not None else [])
    problems += check_model(cfg.model) + check_quant(cfg.quant, cfg.model.denoiser) + check_compile(cfg.compile)
    problems += check_offload(cfg.offload) + check_cache(cfg.cache) + check_lora(cfg.lora)
    return problems


def check_names(cfg: Config) -> List[str]:
    """The names a config gives that only the libraries can judge (imports them)."""
    return check_class_names(cfg) + check_compile_names(cfg.compile)


def check_class_names(cfg: Config) -> List[str]:
    """The classes and backends a config names by string, looked up in the library each key is for: nothing
    else is imported or called (qco/safety/ keeps `_target_`s to an allow-list)."""
    return check_model_names(cfg.model) + check_attention_names(cfg.attention) + check_quant_names(cfg.quant)


def check_stores(cfg: Config) -> List[str]:
    """Each store's folder must be set: an empty one would put the store in the current folder."""
    problems = []
    for field in dataclasses.fields(type(cfg.paths) if not OmegaConf.is_config(cfg.paths) else
                                    OmegaConf.get_type(cfg.paths)):
        variable = field.metadata.get("variable")
        if not str(cfg.paths[field.name] or "").strip():
            problems.append(f"paths.{field.name}='': an empty folder, so files would be written into the current one "
                            f"(is {variable} set to ''?); fix: unset {variable}, or give a folder: "
                            f"paths.{field.name}=/data/qco")
    return problems


def path_fields(cfg: Config):
    """(key, value) of every field the schema marks as a path (metadata path=True) and the config sets."""
    for group in cfg:
        node = cfg[group]
        schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        for field in dataclasses.fields(schema) if schema and dataclasses.is_dataclass(schema) else ():
            if field.metadata.get("path") and node[field.name] is not None:
                yield f"{group}.{field.name}", str(node[field.name])


def check_paths(cfg: Config, run_dir: Path) -> List[str]:
    """A path field must lie inside the run's folder or a store's (paths.*): a library writes where it names."""
    folders = [str(run_dir)] + [str(cfg.paths[name]) for name in cfg.paths if str(cfg.paths[name] or "").strip()]
    return [f"{key}={value}: a folder qco's libraries write into must lie inside the run's folder ({run_dir}) or "
            f"a store's (paths.*); fix: leave it null, or e.g. {key}={Path(run_dir) / 'offload'}"
            for key, value in path_fields(cfg) if not any(inside(value, folder) for folder in folders)]


def check_sweep(cfg: Config) -> List[str]:
    """What every job of a sweep shares: checked once, before any job runs."""
    problems = [f"{key}: required and not set; fix: add {key}=<value> to the command"
                for key in sorted(OmegaConf.missing_keys(cfg))]
    budget = cfg.sweep.memory_budget_gib
    problems += not_a_number("sweep.memory_budget_gib", budget)
    if budget is not None and math.isfinite(budget) and budget <= 0:
        problems.append(f"sweep.memory_budget_gib={budget}: must be above 0, or null for no budget; "
                        "fix: e.g. sweep.memory_budget_gib=12")
    if "latency_under_budget" in cfg.sweep.objective and cfg.sweep.memory_budget_gib is None:
        problems.append("sweep.memory_budget_gib=null: the objective latency_under_budget needs a budget; "
                        "fix: add sweep.memory_budget_gib=<GiB> to the command, e.g. sweep.memory_budget_gib=12")
    return problems


# the tables whose keys reach a library as keyword arguments: the schema names each key (qco/groups/)
CLOSED_TABLES = {"InductorFlags": ("torch._inductor.config", "qco/groups/compile.py"),
                 "DynamoFlags": ("torch._dynamo.config", "qco/groups/compile.py"),
                 "QuantArgs": ("the quantization backend's config", "qco/groups/quant.py"),
                 "CacheArgs": ("the step cache's config class", "qco/groups/cache.py")}


def closed_table_refusal(where: str, name: str, table: str) -> Optional[str]:
    """The line for a key `name` that the closed table `where` (of schema class `table`) does not name; None where
    `table` is not one of them."""
    import qco.groups.cache
    import qco.groups.compile
    import qco.groups.quant

    if table not in CLOSED_TABLES:
        return None
    library, module = CLOSED_TABLES[table]
    schema = next(getattr(m, table) for m in (qco.groups.compile, qco.groups.quant, qco.groups.cache)
                  if hasattr(m, table))
    names = ", ".join(f.name for f in dataclasses.fields(schema))
    return (f"{where}.{name}: not a key qco passes to {library}; {where} takes {names}; fix: use one of them, or "
            f"add {name} as a typed field of {table} in {module} (qco hands a library only the keys its schema "
            "names, never a free table)")


def unknown_keys(cfg) -> List[str]:
    """Keys the schema does not have, added with `+key=` or `++key=` (which Hydra lets through): a typo
    such as `++run.stpes=5` would otherwise run with the default steps."""
    problems = []

    def visit(node, path: str) -> None:
        schema = OmegaConf.get_type(node)
        if not dataclasses.is_dataclass(schema):
            return  # a recipe's component configs: checked against their classes (check_model_names)
        fields = {field.name for field in dataclasses.fields(schema)}
        for key in node.keys():
            if path == "" and key == "hydra":
                continue  # Hydra's own node, typed and checked by Hydra
            if key not in fields and schema.__name__ in CLOSED_TABLES:
                problems.append(closed_table_refusal(path.rstrip("."), str(key), schema.__name__))
                continue
            if key not in fields:
                near = (difflib.get_close_matches(str(key), sorted(fields), n=1)
                        or [f for f in fields if f[:2] == str(key)[:2]] or sorted(fields)[:4])
                problems.append(f"{path}{key}: no such key in {schema.__name__}; fix: check the spelling "
                                f"(e.g. {', '.join(f'{path}{n}' for n in sorted(near))}; `python -m qco --cfg job` "
                                "prints every key)")
                continue
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_none() and not child._is_interpolation():
                visit(child, f"{path}{key}.")

    visit(cfg, "")
    return problems
