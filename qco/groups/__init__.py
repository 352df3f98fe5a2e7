"""One module per config group: its schema (the dataclass Hydra types the group's YAML with), the plan step it
contributes, the code that applies that step to a pipeline, and its single-value checks. The rules between
groups are one table, qco/rules.py; the schema of a whole run is qco/config.py.

Every value that reaches a library is a field of one of these schemas, typed: the tables a library takes as
keyword arguments (compile.inductor, compile.dynamo, quant.kwargs, cache.kwargs) name each key qco supports,
and any other key is refused while Hydra composes. A module imports no library at its top: its schema is
read before the value checks, which run before torch loads."""
