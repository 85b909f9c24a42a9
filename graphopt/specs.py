"""Model specs: the one string every command takes to name a model.

| form                     | meaning                                                          |
| ``path/file.py:factory`` | ``factory()`` returns ``(model, example_inputs)``                |
| ``package.module:factory`` | the same from an importable module                            |
| ``zoo:NAME``             | a model shipped in :mod:`graphopt.zoo`                           |
| ``hf:ClassName``         | a transformers class from its default config, random weights     |

Every failure is a :class:`~graphopt.errors.SpecError` with one line saying what to fix.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from graphopt.errors import SpecError, first_line

__all__ = ["LoadedModel", "load_spec", "parse_overrides"]


@dataclass
class LoadedModel:
    spec: str
    model: torch.nn.Module
    inputs: tuple
    kwargs: dict = field(default_factory=dict)


def parse_overrides(pairs: list[str] | None) -> dict:
    """``["n_layer=2", "act=gelu"]`` -> ``{"n_layer": 2, "act": "gelu"}`` (Python literals)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SpecError(f"--set takes key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def _check_result(spec: str, result) -> LoadedModel:
    if not (isinstance(result, tuple) and len(result) == 2):
        raise SpecError(f"{spec}: the factory must return (model, example_inputs), "
                        f"got {type(result).__name__}")
    model, inputs = result
    if not isinstance(model, torch.nn.Module):
        raise SpecError(f"{spec}: the factory's model is a {type(model).__name__}, "
                        "not a torch.nn.Module")
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, (tuple, list)):
        raise SpecError(f"{spec}: example_inputs must be a tuple, got {type(inputs).__name__}")
    return LoadedModel(spec, model, tuple(inputs))


def _call_factory(spec: str, factory) -> LoadedModel:
    if not callable(factory):
        raise SpecError(f"{spec}: {factory!r} is not callable")
    try:
        result = factory()
    except Exception as exc:  # noqa: BLE001 - a user's factory may raise anything
        raise SpecError(f"{spec}: the factory raised {type(exc).__name__}: {first_line(exc)}") \
            from exc
    return _check_result(spec, result)


def _load_file(spec: str, path: str, attr: str) -> LoadedModel:
    file = Path(path)
    if not file.is_file():
        raise SpecError(f"{spec}: no such file {path!r}")
    mod_name = f"graphopt_user_{abs(hash(str(file.resolve())))}"
    loader = importlib.util.spec_from_file_location(mod_name, file)
    module = importlib.util.module_from_spec(loader)
    sys.modules[mod_name] = module
    try:
        loader.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001
        sys.modules.pop(mod_name, None)
        raise SpecError(f"{spec}: importing {path} raised {type(exc).__name__}: "
                        f"{first_line(exc)}") from exc
    if not hasattr(module, attr):
        names = [n for n in vars(module) if callable(getattr(module, n)) and not n.startswith("_")]
        raise SpecError(f"{spec}: {path} has no factory {attr!r}"
                        + (f" (callables there: {', '.join(names[:8])})" if names else ""))
    return _call_factory(spec, getattr(module, attr))


def _load_module(spec: str, mod: str, attr: str) -> LoadedModel:
    try:
        module = importlib.import_module(mod)
    except ImportError as exc:
        raise SpecError(f"{spec}: cannot import module {mod!r} ({first_line(exc)})") from exc
    if not hasattr(module, attr):
        raise SpecError(f"{spec}: module {mod!r} has no factory {attr!r}")
    return _call_factory(spec, getattr(module, attr))


def _load_zoo(spec: str, name: str, seed: int) -> LoadedModel:
    from graphopt import zoo
    if name not in zoo.ZOO:
        raise SpecError(f"{spec}: no zoo model {name!r}; available: {', '.join(zoo.ZOO)}")
    model, inputs = zoo.build(name, seed=seed)
    return LoadedModel(spec, model, inputs)


def _config_fields(config) -> list[str]:
    try:
        return sorted(config.to_dict())
    except Exception:  # noqa: BLE001 - only used for a suggestion in an error message
        return sorted(k for k in vars(config) if not k.startswith("_"))


def _type_mismatch(default, value) -> str | None:
    """The type a field's default says it takes, when ``value`` plainly is not one.

    Only clear mismatches (text for a number, a number for a flag or a name) are caught here;
    finer distinctions (int or float, int or list) are left to the config class, which knows
    what else a field accepts (ViT's ``image_size`` takes an int or a pair).
    """
    if value is None or default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "bool (True or False)"
    if isinstance(default, (int, float)) and isinstance(value, (str, bool)):
        return type(default).__name__
    if isinstance(default, str) and isinstance(value, (int, float, bool)):
        return "str"
    return None


def _set_config_field(spec: str, config, key: str, value) -> None:
    """``--set key=value`` on a transformers config: unknown keys and wrong types are one line."""
    name = type(config).__name__
    where = f"{spec}: --set {key}={value!r}"
    if not key or key.startswith("_") or not hasattr(config, key) or \
            callable(getattr(config, key)):
        close = difflib.get_close_matches(key, _config_fields(config), n=3)
        raise SpecError(f"{spec}: {name} has no field {key!r}"
                        + (f" (did you mean {', '.join(close)}?)" if close else ""))
    default = getattr(config, key)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)   # --set eps=1 means 1.0; strict configs refuse an int for a float
    if isinstance(default, bool) and isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    expected = _type_mismatch(default, value)
    if expected is not None:
        raise SpecError(f"{where}: {name}.{key} takes {expected}, got {type(value).__name__}")
    try:
        setattr(config, key, value)
    except Exception as exc:  # noqa: BLE001 - config classes validate with their own errors
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = lines[-1] if lines else type(exc).__name__   # strict configs put the cause last
        why = why if len(why) <= 200 else why[:197] + "..."
        raise SpecError(f"{where}: {name} refused it: {why}") from exc


def _load_hf(spec: str, cls_name: str, overrides: dict, batch: int, seq: int,
             image_size: int | None, seed: int) -> LoadedModel:
    try:
        import transformers
    except ImportError:
        raise SpecError(f"{spec}: needs HuggingFace transformers: pip install 'graphopt[hf]'") \
            from None
    cls = getattr(transformers, cls_name, None)
    if cls is None or not hasattr(cls, "config_class"):
        raise SpecError(f"{spec}: transformers has no model class {cls_name!r} "
                        "(e.g. GPT2LMHeadModel, BertModel, ViTModel, ResNetModel)")
    config = cls.config_class()
    if image_size is not None and hasattr(config, "image_size"):
        config.image_size = image_size
    for key, value in overrides.items():
        _set_config_field(spec, config, key, value)
    if hasattr(config, "use_cache"):
        config.use_cache = False  # a KV cache output is not a tensor graph
    torch.manual_seed(seed)
    try:
        model = cls(config).eval()
    except Exception as exc:  # noqa: BLE001
        raise SpecError(f"{spec}: building {cls_name} raised {type(exc).__name__}: "
                        f"{first_line(exc)}") from exc
    if getattr(model, "loss_type", "") is None:
        # transformers finds no loss by some class names (GPT2LMHeadModel) and, at the first
        # loss, warns once per process that it uses the causal-LM loss; name that loss here
        model.loss_type = "ForCausalLM"
    main = getattr(model, "main_input_name", "input_ids")
    gen = torch.Generator().manual_seed(seed)
    if main == "input_ids":
        vocab = int(getattr(config, "vocab_size", 1000))
        inputs = (torch.randint(0, vocab, (batch, seq), generator=gen),)
    elif main == "pixel_values":
        size = image_size or getattr(config, "image_size", 224)
        size = size[0] if isinstance(size, (list, tuple)) else size
        channels = int(getattr(config, "num_channels", 3))
        inputs = (torch.randn(batch, channels, size, size, generator=gen),)
    else:
        raise SpecError(f"{spec}: cannot synthesize inputs named {main!r}; write a "
                        "file.py:factory spec that returns (model, example_inputs)")
    return LoadedModel(spec, model, inputs)


def load_spec(spec: str, *, overrides: dict | None = None, batch: int = 1, seq: int = 128,
              image_size: int | None = None, seed: int = 0) -> LoadedModel:
    """Load a model spec into ``(model, example_inputs)``.

    Example:
        >>> m = load_spec("zoo:mlp")
        >>> m = load_spec("hf:GPT2LMHeadModel", overrides={"n_layer": 2}, seq=64)
    """
    if ":" not in spec:
        raise SpecError(f"{spec!r} is not a model spec; use file.py:factory, module:factory, "
                        "zoo:NAME or hf:ClassName")
    kind, _, rest = spec.partition(":")
    if overrides and kind != "hf":
        raise SpecError(f"{spec}: --set overrides transformers config fields, so it applies to "
                        "hf:ClassName specs only")
    for what, value in (("batch", batch), ("seq", seq), ("image_size", image_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise SpecError(f"{spec}: {what} must be a positive integer, got {value!r}")
    if kind == "zoo":
        return _load_zoo(spec, rest, seed)
    if kind == "hf":
        return _load_hf(spec, rest, overrides or {}, batch, seq, image_size, seed)
    path, _, attr = spec.rpartition(":")
    if not attr:
        raise SpecError(f"{spec}: name the factory after the colon")
    torch.manual_seed(seed)
    if path.endswith(".py") or "/" in path or Path(path).is_file():
        return _load_file(spec, path, attr)
    return _load_module(spec, path, attr)
