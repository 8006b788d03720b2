"""Records: the part of `dataclasses` einhorn uses (`dataclass`, `field`, `fields`, `replace`), at a fraction of its cost.

`dataclasses` imports `inspect` at its top (and with it `ast`, `dis`, `tokenize`, `linecache`), only to
write a docstring for a class without one, and compiles source for five to eight methods of every class.
For the master that is about 3 MiB of its 17 MiB at idle, and the larger part of its start-up time, which
every upgrade pays twice (`--upgrade-check`, then the new image). Here only `__init__` is compiled (it is
on the core's hot path: `replace` in every step), at its first call; `__repr__`, `__eq__`, `__hash__` and the frozen
`__setattr__` are shared functions that read a per-class tuple of field names.

The type checker sees `dataclasses` itself (the names below are re-exported under TYPE_CHECKING), so the
classes are checked exactly as dataclasses; the run-time part keeps their behaviour for what einhorn uses:
keyword or positional `__init__` with defaults and `default_factory`, `__post_init__`, `init=False`,
`repr=False`, `compare=False`, `frozen`, `slots`, `eq=False`, `__match_args__`, the same `repr` text, and
methods a class defines itself win. Not supported (einhorn uses none): inheritance between records,
`order`, `kw_only`, `ClassVar`/`InitVar` fields.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: an idle master need not hold it (issue 14)

if TYPE_CHECKING:
    from dataclasses import FrozenInstanceError as FrozenInstanceError
    from dataclasses import dataclass as dataclass
    from dataclasses import field as field
    from dataclasses import fields as fields
    from dataclasses import replace as replace
else:
    import reprlib
    from operator import attrgetter

    class _Missing:
        __slots__ = ()

        def __repr__(self):
            return "MISSING"

    MISSING = _Missing()

    class FrozenInstanceError(AttributeError):
        """Assigning to a field of a frozen record (as `dataclasses.FrozenInstanceError`)."""

    class Field:
        __slots__ = ("name", "default", "default_factory", "init", "repr", "compare")

        def __init__(self, default, default_factory, init, repr, compare):
            if default is not MISSING and default_factory is not MISSING:
                raise ValueError("cannot specify both default and default_factory")
            self.name = None
            self.default = default
            self.default_factory = default_factory
            self.init = init
            self.repr = repr
            self.compare = compare

        def __repr__(self):
            return f"Field(name={self.name!r},default={self.default!r},default_factory={self.default_factory!r},init={self.init!r},repr={self.repr!r},compare={self.compare!r})"

    def field(*, default=MISSING, default_factory=MISSING, init=True, repr=True, compare=True):
        return Field(default, default_factory, init, repr, compare)

    def fields(class_or_instance):
        found = getattr(class_or_instance, "__record_fields__", None)
        if found is None:  # a real dataclass (tests and tools have their own)
            import dataclasses

            return dataclasses.fields(class_or_instance)
        return tuple(found.values())

    def replace(obj, /, **changes):
        positions = getattr(obj, "__record_init_positions__", None)
        if positions is None:  # a real dataclass (tests and tools have their own)
            import dataclasses

            return dataclasses.replace(obj, **changes)
        # The core's hot path (several per step): the fields read at once, the changed ones put in place,
        # `__init__` called positionally (no keyword matching).
        values = list(obj.__record_init_values__(obj))
        for name, value in changes.items():
            position = positions.get(name)
            if position is None:
                return obj.__class__(**{**dict(zip(obj.__record_init_names__, values, strict=True)), **changes})  # its TypeError
            values[position] = value
        return obj.__class__(*values)

    @reprlib.recursive_repr()
    def _repr(self):
        shown = self.__record_repr__(self)
        names = self.__record_repr_names__
        return (
            f"{self.__class__.__qualname__}({', '.join(f'{name}={value!r}' for name, value in zip(names, shown, strict=True))})"
        )

    def _eq(self, other):
        if other.__class__ is self.__class__:
            return self.__record_key__(self) == other.__record_key__(other)
        return NotImplemented

    def _hash(self):
        return hash(self.__record_key__(self))

    def _frozen_setattr(self, name, value):
        if type(self) is self.__record_class__ or name in self.__record_fields__:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        super(self.__record_class__, self).__setattr__(name, value)

    def _frozen_delattr(self, name):
        if type(self) is self.__record_class__ or name in self.__record_fields__:
            raise FrozenInstanceError(f"cannot delete field {name!r}")
        super(self.__record_class__, self).__delattr__(name)

    def _getstate(self):
        return [getattr(self, name) for name in self.__record_fields__]

    def _setstate(self, state):
        for name, value in zip(self.__record_fields__, state, strict=True):
            object.__setattr__(self, name, value)

    def _tuple_getter(names):
        """A function of an instance -> the tuple of those fields (`attrgetter` gives a bare value for one name)."""
        if len(names) > 1:
            return attrgetter(*names)
        if names:
            single = attrgetter(names[0])
            return lambda obj: (single(obj),)
        return lambda obj: ()

    def _init_function(cls, found, frozen, annotations):
        """`__init__`, compiled as dataclasses does: it runs on every `replace`, so it must be as fast.
        A frozen record with slots sets each field through its slot's own descriptor: what
        `object.__setattr__` finds and calls, without looking it up (a State is made in ~0.6x the time)."""
        namespace = {"__record_object_setattr__": object.__setattr__, "MISSING": MISSING}
        slotted = frozen and "__slots__" in cls.__dict__
        parameters, body = [], []
        for f in found.values():
            if f.init:
                if f.default_factory is not MISSING:
                    namespace[f"__factory_{f.name}"] = f.default_factory
                    parameters.append(f"{f.name}=MISSING")
                    value = f"__factory_{f.name}() if {f.name} is MISSING else {f.name}"
                elif f.default is not MISSING:
                    namespace[f"__default_{f.name}"] = f.default
                    parameters.append(f"{f.name}=__default_{f.name}")
                    value = f.name
                else:
                    parameters.append(f.name)
                    value = f.name
            elif f.default_factory is not MISSING:
                namespace[f"__factory_{f.name}"] = f.default_factory
                value = f"__factory_{f.name}()"
            elif f.default is not MISSING:
                namespace[f"__default_{f.name}"] = f.default
                value = f"__default_{f.name}"
            else:
                continue
            if slotted:
                namespace[f"__set_{f.name}"] = cls.__dict__[f.name].__set__
                body.append(f"__set_{f.name}(self, {value})")
            else:
                body.append(f"__record_object_setattr__(self, {f.name!r}, {value})" if frozen else f"self.{f.name} = {value}")
        if hasattr(cls, "__post_init__"):
            body.append("self.__post_init__()")
        source = f"def __init__(self, {', '.join(parameters)}):\n" + "".join(f"    {line}\n" for line in body or ["pass"])
        exec(source, namespace)
        init = namespace["__init__"]
        init.__annotations__ = {f.name: annotations[f.name] for f in found.values() if f.init} | {"return": None}
        init.__qualname__ = f"{cls.__qualname__}.__init__"
        return init

    def _compiled_at_first_call(cls, found, frozen, annotations):
        """An `__init__` that compiles the real one (`_init_function`), puts it in its place and runs it: most
        records are never made in a given run, and compiling all of them cost each start ~7 ms of ~45."""

        def __init__(self, *args, **kwargs):
            real = cls.__init__ = _init_function(cls, found, frozen, annotations)
            real(self, *args, **kwargs)

        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        return __init__

    def _process(cls, *, init, repr, eq, frozen, slots):
        annotations = cls.__dict__.get("__annotations__", {})
        found = {}
        for name in annotations:
            default = cls.__dict__.get(name, MISSING)
            f = default if isinstance(default, Field) else Field(default, MISSING, True, True, True)
            f.name = name
            found[name] = f
        seen_default = False
        for f in found.values():
            if not f.init:
                continue
            if f.default is MISSING and f.default_factory is MISSING:
                if seen_default:
                    raise TypeError(f"non-default argument {f.name!r} follows default argument")
            else:
                seen_default = True
            if isinstance(f.default, list | dict | set):
                raise ValueError(f"mutable default {type(f.default)} for field {f.name} is not allowed: use default_factory")
        class_hash = cls.__dict__.get("__hash__", MISSING)
        explicit_hash = not (class_hash is MISSING or (class_hash is None and "__eq__" in cls.__dict__))
        if slots:
            namespace = dict(cls.__dict__)
            for name in found:
                namespace.pop(name, None)
            namespace.pop("__dict__", None)
            namespace.pop("__weakref__", None)
            namespace["__slots__"] = tuple(found)
            qualname = cls.__qualname__
            cls = type(cls)(cls.__name__, cls.__bases__, namespace)
            cls.__qualname__ = qualname
        else:
            for f in found.values():
                if isinstance(cls.__dict__.get(f.name), Field):
                    if f.default is MISSING:
                        delattr(cls, f.name)
                    else:
                        setattr(cls, f.name, f.default)

        def put(name, value):
            if name not in cls.__dict__:
                setattr(cls, name, value)

        cls.__record_fields__ = found
        cls.__record_class__ = cls
        cls.__record_init_names__ = tuple(f.name for f in found.values() if f.init)
        cls.__record_init_positions__ = {name: position for position, name in enumerate(cls.__record_init_names__)}
        cls.__record_init_values__ = staticmethod(_tuple_getter(cls.__record_init_names__))
        if init:
            put("__init__", _compiled_at_first_call(cls, found, frozen, annotations))
        if repr:
            cls.__record_repr_names__ = tuple(f.name for f in found.values() if f.repr)
            cls.__record_repr__ = staticmethod(_tuple_getter(cls.__record_repr_names__))
            put("__repr__", _repr)
        if eq:
            cls.__record_key__ = staticmethod(_tuple_getter(tuple(f.name for f in found.values() if f.compare)))
            put("__eq__", _eq)
        if frozen:
            for name in ("__setattr__", "__delattr__"):
                if name in cls.__dict__:
                    raise TypeError(f"Cannot overwrite attribute {name} in class {cls.__name__}")
            cls.__setattr__ = _frozen_setattr
            cls.__delattr__ = _frozen_delattr
        if not explicit_hash:
            if eq and frozen:
                cls.__hash__ = _hash
            elif eq:
                cls.__hash__ = None
        if slots and frozen:
            put("__getstate__", _getstate)
            put("__setstate__", _setstate)
        put("__match_args__", cls.__record_init_names__)
        return cls

    def dataclass(cls=None, /, *, init=True, repr=True, eq=True, frozen=False, slots=False):
        def wrap(cls):
            return _process(cls, init=init, repr=repr, eq=eq, frozen=frozen, slots=slots)

        return wrap if cls is None else wrap(cls)


__all__ = ["FrozenInstanceError", "dataclass", "field", "fields", "replace"]
