"""The patch table's machinery: a Row names an official class attribute, or a module-level function, and its fastar
replacement; apply() puts the replacements on a live model's instances or on the imported classes (a function: on
the global its callers look it up by); undo() restores them."""
import collections
import dataclasses
import functools
import sys
import types
import weakref
from typing import Callable

import torch.nn as nn


@dataclasses.dataclass(frozen=True, repr=False)
class Row:
    group: str  # the keyword of fastar.patch.<codebase>() that turns it on
    module: str  # the official module, e.g. "models.basic_var"
    cls: str  # the official class in it
    attr: str  # the attribute replaced
    new: Callable  # the replacement, called as new(self, *args, **kwargs) (a function row: new(*args, **kwargs))
    when: str  # the condition under which it applies, in words
    declines: Callable = lambda *args, **kwargs: None  # same arguments as new -> why it does not apply, or None
    function: bool = False  # attr is a module-level function that cls's methods call by name: the global of
    #                         `module` (of a live model's class's module) is replaced, not a method of cls

    def __repr__(self):
        return f"Row({self.group}: {self.module}.{self.cls}.{self.attr})"


# (owner, attr, had_own, original, row): owner is a class, a module (function rows) or a weak reference to an
# instance (a patched model is freed as if it were not patched; its entry is then dropped)
_applied = []
_declined = collections.defaultdict(weakref.WeakKeyDictionary)  # row -> {instance or module: reason of its last
#                                                                  declined call}


def _owner(entry):
    """The class, module or (still alive) instance an _applied entry patched, or None."""
    owner = entry[0]
    return owner() if isinstance(owner, weakref.ref) else owner


def _forget(ref):
    """A patched instance was freed: its entries go."""
    _applied[:] = [e for e in _applied if e[0] is not ref]


def _record(owner, attr, had_own, before, row):
    is_instance = not isinstance(owner, (type, types.ModuleType))
    _applied.append((weakref.ref(owner, _forget) if is_instance else owner, attr, had_own, before, row))


def _wrap(row, original, module=None):
    """The replacement installed: row.new where row.declines says nothing, else the original, the reason kept
    under the instance (a function row: under the module whose global it is)."""
    def call(key, args, kwargs):
        reason = row.declines(*args, **kwargs)
        if reason is None:
            _declined[row].pop(key, None)
            return row.new(*args, **kwargs)
        _declined[row][key] = reason
        return original(*args, **kwargs)

    if row.function:
        def patched(*args, **kwargs):
            return call(module, args, kwargs)
    else:
        def patched(self, *args, **kwargs):
            return call(self, (self,) + args, kwargs)
    patched = functools.wraps(original)(patched)
    patched.__fastar_row__ = row
    return patched


def _matches(obj, row):
    """obj is an instance of row's class: same class name, and its module is row.module, a package's copy of it
    (pkg.models.mar) or its last part alone (mar, when the models folder itself is on sys.path)."""
    t, m = type(obj), type(obj).__module__
    return t.__name__ == row.cls and (m == row.module or m.endswith("." + row.module)
                                      or m == row.module.rsplit(".", 1)[-1])


def _install_function(module, row, caller):
    """Replaces the global row.attr of `module` (where its callers look it up)."""
    original = vars(module).get(row.attr)
    if not callable(original):
        raise AttributeError(f"{caller}: {module.__name__} has no function {row.attr!r}: the repository layout "
                             f"differs from the one fastar patches")
    if getattr(original, "__fastar_row__", None) is row:
        return  # already patched
    setattr(module, row.attr, _wrap(row, original, module))
    _record(module, row.attr, True, original, row)


def _class_module(obj):
    """The module obj's class is defined in: where its methods look up the functions they call."""
    return sys.modules[type(obj).__module__]


def _install(owner, row, caller):
    had_own = row.attr in vars(owner)
    original = getattr(owner if isinstance(owner, type) else type(owner), row.attr, None)
    if original is None:
        raise AttributeError(f"{caller}: {row.module}.{row.cls} has no attribute {row.attr!r}: the repository "
                             f"layout differs from the one fastar patches")
    if getattr(getattr(owner, row.attr), "__fastar_row__", None) is row:
        return  # already patched
    before = vars(owner).get(row.attr)
    patched = _wrap(row, original)
    setattr(owner, row.attr, patched if isinstance(owner, type) else types.MethodType(patched, owner))
    _record(owner, row.attr, had_own, before, row)


def apply(rows, model, caller):
    """Patches every instance of each row's class in `model` (an nn.Module), or the classes themselves; a function
    row replaces the global of the module that defines the class of those instances (so every instance of a class
    from that module calls the replacement), or of row.module. All or nothing: on an error, what this call patched
    is restored before it is raised."""
    start = len(_applied)
    try:
        return _apply(rows, model, caller)
    except BaseException:
        _restore(_applied[start:])
        del _applied[start:]
        raise


def _apply(rows, model, caller):
    if model is not None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"{caller}: model must be an nn.Module (or None to patch the classes), got "
                            f"{type(model).__name__}")
        found = []
        for row in rows:
            mods = [m for m in model.modules() if _matches(m, row)]
            for m in mods:
                _install_function(_class_module(m), row, caller) if row.function else _install(m, row, caller)
            found += [row] if mods else []
        if not found:
            raise ValueError(f"{caller}: no module of model is one of {sorted({r.module + '.' + r.cls for r in rows})}"
                             f" (found {type(model).__module__}.{type(model).__name__})")
        return found
    for row in rows:
        mod = sys.modules.get(row.module)
        if mod is None:
            raise ImportError(f"{caller}: the official module {row.module!r} is not imported: import it first "
                              f"(run from the official repository's root), or pass the model")
        if row.function:
            _install_function(mod, row, caller)
            continue
        cls = getattr(mod, row.cls, None)
        if not isinstance(cls, type):
            raise AttributeError(f"{caller}: {row.module} has no class {row.cls!r}: the repository layout differs")
        _install(cls, row, caller)
    return list(rows)


def undo(model=None):
    """Restores what fastar.patch put on `model`'s modules, or everything it patched when model is None. A function
    row's global is shared by every model of its module: undo(model) restores it for all of them. A copy of a patched
    model (copy.deepcopy carries its patched methods) is restored by undo(copy)."""
    owners = None if model is None else {id(o) for m in model.modules() for o in (m, sys.modules.get(
        type(m).__module__))}
    undone = [e for e in _applied if _owner(e) is not None and (owners is None or id(_owner(e)) in owners)]
    _restore(undone)
    _applied[:] = [e for e in _applied if _owner(e) is not None and not any(e is u for u in undone)]
    if model is not None:  # copies of a patched model (deepcopy, pickling) carry its methods untracked
        for m in model.modules():
            for attr, value in list(vars(m).items()):
                if getattr(value, "__fastar_row__", None) is not None:
                    delattr(m, attr)


def _restore(entries):
    """Puts back what the _applied entries replaced (the last first) and forgets their declines."""
    for entry in reversed(entries):
        owner, (_, attr, had_own, before, row) = _owner(entry), entry
        if owner is None:
            continue
        if had_own:
            setattr(owner, attr, before)
        else:
            delattr(owner, attr)
        if isinstance(owner, type):
            _declined.pop(row, None)
        else:
            _declined[row].pop(owner, None)


def report(model):
    """[(module name, row, status)] for every module of `model` that a row in force (patched on some instance or
    class, not undone) targets: 'applied', 'declined: <reason>' when its last call ran the original, or 'not
    patched' (the row is in force elsewhere, e.g. on another instance). Empty after undo()."""
    out, rows = [], {id(r): r for *_, r in _applied}.values()
    for name, m in model.named_modules():
        for row in rows:
            if not _matches(m, row):
                continue
            owner = _class_module(m) if row.function else m
            patched = getattr(getattr(owner, row.attr, None), "__fastar_row__", None) is row
            reason = _declined[row].get(owner) if row in _declined else None
            status = "not patched" if not patched else f"declined: {reason}" if reason else "applied"
            out.append((name, row, status))
    return out
