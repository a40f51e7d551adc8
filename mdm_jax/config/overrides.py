"""`key=value` overrides of nested frozen config dataclasses, and their JSON round trip.

    cfg = apply_overrides(cfg, ["llm.num_layers=2", "dtype=bfloat16"])   # unknown keys, bad values: ConfigError
"""

from __future__ import annotations

import dataclasses
import typing


class ConfigError(ValueError):
    """A preset name, override key or override value that cannot be applied."""


def check(ok: bool, message: str):
    """Config validation: `ConfigError(message)` unless `ok`."""
    if not ok:
        raise ConfigError(message)


def registry(names: typing.Sequence[str], implementations: dict, what: str) -> dict:
    """`implementations` keyed by exactly the config's `names` (the one list of allowed values), checked
    when the implementing module loads: a name added to a config without its code fails at import."""
    if set(implementations) != set(names):
        raise ImportError(f"{what}: the implementations {sorted(implementations)} do not match the config's names "
                          f"{sorted(names)}")
    return implementations


def config_keys(cfg: object, prefix: str = "") -> dict[str, type]:
    """Every overridable dotted key and its type, e.g. {'llm.num_layers': int, ...}."""
    keys = {}
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys.update(config_keys(value, f"{prefix}{f.name}."))
        else:
            keys[prefix + f.name] = hints[f.name]
    return keys


def apply_overrides(cfg, overrides: typing.Sequence[str]):
    """Apply `a.b=value` strings (a later one wins); unknown keys and ill-typed values raise
    `ConfigError`. Each config is validated once, with every override in place, so settings that
    must change together (e.g. a Talker and its layer counts) can."""
    types_, changes = config_keys(cfg), {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        if key not in types_:
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(types_))}")
        changes[key] = _parse(key, raw, types_[key])
    return _replace(cfg, changes)


def _replace(cfg, changes: dict):
    """`cfg` with the dotted-key `changes`, each nested config rebuilt once."""
    fields = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        fields.setdefault(head, {})[rest] = value
    return dataclasses.replace(cfg, **{head: _replace(getattr(cfg, head), sub) if "" not in sub else sub[""]
                                       for head, sub in fields.items()})


def _parse(key: str, raw: str, typ):
    args = typing.get_args(typ)
    if type(None) in args:  # `T | None`: "none" or a T
        if raw.lower() in ("none", "null"):
            return None
        (typ,) = [a for a in args if a is not type(None)]
    if typ is bool:
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
    elif typ is int:
        try:
            return int(raw)
        except ValueError:
            pass
    elif typ is float:
        try:
            return float(raw)
        except ValueError:
            pass
    elif typ is str:
        return raw
    raise ConfigError(f"config key {key!r} expects {typ.__name__}, got {raw!r}")


def from_dict(cls, data: dict):
    """Rebuild a (nested) config dataclass from `dataclasses.asdict` output; unknown keys raise."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        typ = hints.get(name)
        if typ is None:
            raise ConfigError(f"unknown config key {name!r} for {cls.__name__}")
        kwargs[name] = from_dict(typ, value) if dataclasses.is_dataclass(typ) else value
    return cls(**kwargs)


def differing_keys(a, b) -> list[str]:
    """Dotted keys whose values differ between two configs of the same dataclass type."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out

    fa, fb = flat(dataclasses.asdict(a)), flat(dataclasses.asdict(b))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
