"""Policies: initialize a whole model from readable rules, each parameter exactly once.

A :class:`Policy` is a list of ``(selector, spec)`` rules; later rules override
earlier ones, so the general rule comes first and the exceptions after it::

    policy = Policy([
        (nn.Linear, {"weight": Normal(std=0.02), "bias": Zeros()}),
        (nn.LayerNorm, {"weight": Ones(), "bias": Zeros()}),
        ("*.c_proj.weight", Normal(std=0.02 / (2 * n_layer) ** 0.5)),
    ])
    report = policy.apply_(model, generator=torch.Generator().manual_seed(0))
    print(report)

Selectors: a module class (instances and subclasses; the spec is a dict from the
parameter's attribute name to an initializer), a glob on the fully qualified
parameter name (matched against the whole name with :func:`fnmatch.fnmatchcase`,
so ``"*.c_proj.weight"`` matches ``transformer.h.0.attn.c_proj.weight``), or a
callable ``(name, param, module) -> bool``.

Determinism: with a generator, one 63-bit number is drawn from it per call
(:func:`~torchinit.rng.seeds.derive_seed`), and each parameter draws from its own stream, seeded by a
stable hash (BLAKE2b) of that number and the parameter's qualified name. Re-seeding
the generator reproduces the weights, two calls with one generator give different
weights (as two calls of ``normal_(generator=g)`` do), and adding a layer under a
new name changes no other layer. Without a generator the global RNG is used in
parameter order, as torch's constructors do.

Rules that match nothing are mistakes (a glob with a typo, a misspelt attribute
key): they get a warning that names them, an error with ``strict=True``. Presets
mark their catalogue rules (one per layer class) as optional.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from torchinit._util.tensors import is_uninitialized, keeps_thread_modes
from torchinit._util.text import text_table
from torchinit._util.warn import quiet, warn
from torchinit.model.snapshot import Snapshot
from torchinit.model.standins import module_stand_in
from torchinit.rng.sampling import is_dtensor, make_sampler
from torchinit.rng.seeds import derive_seed, stream_kwargs
from torchinit.schemes.initializers import Initializer
from torchinit.schemes.layout import module_layout

__all__ = [
    "Policy", "Rule", "InitReport", "ReportRow", "named_parameter_owners",
]  # fmt: skip

Selector = type | str | Callable[[str, Tensor, nn.Module], bool]


@dataclass(frozen=True)
class Rule:
    """One normalized rule of a policy: its position, selector and spec."""

    index: int
    selector: Selector
    spec: Initializer | dict[str, Initializer]
    required: bool = True  # a rule that matches nothing is reported (presets' catalogue rules are not)

    @property
    def module_level(self) -> bool:
        return _is_module_level(self.spec)

    def selector_repr(self) -> str:
        s = self.selector
        if isinstance(s, type):
            return s.__name__
        if isinstance(s, str):
            return repr(s)
        return f"{getattr(s, '__name__', type(s).__name__)}()"

    def describe(self) -> str:
        """``#index selector``, as reports show it."""
        return f"#{self.index} {self.selector_repr()}"

    def match(self, name: str, attr: str, param: Tensor, module: nn.Module) -> Initializer | None:
        """The initializer this rule gives the parameter ``name`` (attribute ``attr`` of ``module``), or None."""
        s = self.selector
        if self.module_level:
            return None  # matched by its unit (Policy.plan)
        if isinstance(s, type):
            return self.spec.get(attr) if isinstance(module, s) else None  # type: ignore[union-attr]
        if isinstance(s, str):
            return self.spec if fnmatch.fnmatchcase(name, s) else None  # type: ignore[return-value]
        return self.spec if s(name, param, module) else None  # type: ignore[return-value]

    def assign(self, owner: Owner, param: Tensor, paths: dict[int, list[tuple[str, nn.Module]]]) -> Assignment | None:
        """What this rule does to ``param`` registered at ``owner``: (initializer, unit or None), or None.

        A module-level rule initializes the parameter's unit (:meth:`ModuleInitializer.unit`, given the
        owner's path from the root) when that unit is an instance of the rule's class; any other rule
        matches the parameter itself (:meth:`match`).
        """
        if self.module_level:
            spec = cast(ModuleInitializer, self.spec)  # or an older subclass with the same ``unit``
            unit = spec.unit(paths[id(owner.module)], owner.attr)
            if unit is None or not isinstance(unit[1], self.selector):  # type: ignore[arg-type]
                return None
            return spec, unit
        init = self.match(owner.name, owner.attr, param, owner.module)
        return None if init is None else (init, None)


class ModuleInitializer(Initializer):
    """An initializer of whole modules, in an order of their own (``presets.TorchReset``: torch's constructors).

    A policy rule ``(ModuleClass, module_initializer)`` initializes, for each parameter of the model, the
    *unit* :meth:`unit` names, when it is an instance of ``ModuleClass``; each unit runs once, with the
    qualified name of the unit as its stream name. Parameters inside a unit that other rules cover keep
    those rules' values.
    """

    module_level = True  # how an Initializer subclass declared this before ModuleInitializer (still honoured)

    def unit(self, path: list[tuple[str, nn.Module]], attr: str) -> tuple[str, nn.Module] | None:
        """For a parameter ``attr`` of the last module of ``path`` (root first): the module to initialize, or None."""
        raise NotImplementedError


def _is_module_level(spec: Any) -> bool:
    """A module-level initializer: a ModuleInitializer, or an older Initializer subclass that says
    ``module_level = True`` and defines ``unit``."""
    return isinstance(spec, ModuleInitializer) or (isinstance(spec, Initializer)
                                                   and getattr(spec, "module_level", False) is True)


class OwnerInitializer(Initializer):
    """An initializer of one parameter that is given the module owning it, not the tensor
    (``presets.TorchBias``: torch's bias bound depends on the owning layer's weight)."""

    wants_owner = True  # how an Initializer subclass declared this before OwnerInitializer (still honoured)


#: What a rule does to one parameter: the initializer, and the (name, module) unit of a module-level rule.
Assignment = tuple[Initializer, tuple[str, nn.Module] | None]


def _normalize(index: int, rule: Any) -> Rule:
    if isinstance(rule, Rule):
        return Rule(index, rule.selector, rule.spec, rule.required)
    if not isinstance(rule, (tuple, list)) or len(rule) != 2:
        raise TypeError(f"rules[{index}] must be a (selector, spec) pair; got {rule!r}")
    selector, spec = rule
    if isinstance(selector, type):
        if not issubclass(selector, nn.Module):
            raise TypeError(f"rules[{index}]: a class selector must be an nn.Module subclass; got {selector.__name__}")
        if _is_module_level(spec):
            return Rule(index, selector, spec)
        if not isinstance(spec, dict) or not spec:
            raise TypeError(
                f"rules[{index}]: the spec of a module-class selector is a dict "
                f"{{parameter attribute name: Initializer}} or a module-level Initializer; got {spec!r}"
            )
        for attr, init in spec.items():
            if not isinstance(attr, str) or not isinstance(init, Initializer):
                raise TypeError(f"rules[{index}]: spec entries must be str: Initializer; got {attr!r}: {init!r}")
        return Rule(index, selector, dict(spec))
    if not isinstance(selector, str) and not callable(selector):
        raise TypeError(
            f"rules[{index}]: a selector is an nn.Module class, a glob string or a callable "
            f"(name, param, module) -> bool; got {selector!r}"
        )
    if not isinstance(spec, Initializer):
        raise TypeError(f"rules[{index}]: the spec of a glob or callable selector is one Initializer; got {spec!r}")
    return Rule(index, selector, spec)


@dataclass
class Owner:
    """Where a parameter lives: its qualified name, the module that owns it directly, and the attribute."""

    name: str
    module: nn.Module
    attr: str


def named_parameter_owners(model: nn.Module) -> list[tuple[Tensor, list[Owner]]]:
    """Every distinct parameter of ``model`` with all the places it is registered (tied weights: several).

    In ``named_parameters()`` order, keyed by identity, so a shared parameter appears once.
    """
    found: dict[int, tuple[Tensor, list[Owner]]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, param in module._parameters.items():
            if param is None:
                continue
            name = f"{module_name}.{attr}" if module_name else attr
            entry = found.setdefault(id(param), (param, []))
            if all(o.name != name for o in entry[1]):
                entry[1].append(Owner(name, module, attr))
    return list(found.values())


@dataclass
class Planned:
    """One parameter and what will initialize it."""

    param: Tensor
    owners: list[Owner]
    rule: Rule | None = None
    initializer: Initializer | None = None
    source: str = "untouched"
    detail: str = ""  # what the report shows in place of the initializer's repr (materialize_'s other sources)
    unit: tuple[str, nn.Module] | None = None  # a module-level initializer's module (name, module)

    @property
    def name(self) -> str:
        return self.owners[0].name

    @property
    def owner(self) -> Owner:
        return self.owners[0]

    def target(self) -> Any:
        """What the initializer is called on: the owning layer for layout-aware schemes on its weight."""
        assert self.initializer is not None
        if self.unit is not None:
            return self.unit[1]
        if isinstance(self.initializer, OwnerInitializer) or getattr(self.initializer, "wants_owner", False):
            return self.owner.module  # (``wants_owner = True``: how an Initializer subclass asked before)
        for o in self.owners:
            if self.initializer.uses_layout and o.attr == "weight" and _has_layout(o.module):
                return o.module
        return self.param

    def run(self, **randomness: Any) -> None:
        """Run the initializer on :meth:`target` (a per-parameter rule; a unit runs with :func:`run_unit`)."""
        assert self.initializer is not None
        self.initializer.init(self.target(), **randomness)

    def first_of_unit(self, done: set[tuple[int, int]]) -> bool:
        """Whether this plan runs its module-level unit: a unit runs once per rule, for the first parameter the
        rule covers in it; ``done`` holds the (rule, unit) pairs already run, this one added."""
        if self.unit is None:
            return False
        assert self.rule is not None  # only a rule gives a plan its unit
        key = (self.rule.index, id(self.unit[1]))
        if key in done:
            return False
        done.add(key)
        return True


def _has_layout(module: nn.Module) -> bool:
    try:
        module_layout(module)
    except TypeError:
        return False
    return True


@dataclass
class ReportRow:
    """One parameter in a report. ``std`` is computed when it is read, never while initializing."""

    name: str
    shape: tuple[int, ...]
    rule: str
    initializer: str
    tensor: Tensor | None = field(default=None, repr=False, compare=False)
    aliases: list[str] = field(default_factory=list)

    @property
    def std(self) -> float | None:
        """The parameter's current standard deviation (None for meta, integer, one-element and DTensor parameters)."""
        return None if self.tensor is None else _std(self.tensor)


class InitReport:
    """What a policy (or :func:`~torchinit.materialize_`) did: one row per distinct parameter.

    ``str(report)`` is a table (parameter, shape, rule, initializer, std); the std
    column is computed when the table is made, from the parameters' current values;
    ``report.rows`` holds :class:`ReportRow` objects; ``report.untouched`` lists the
    parameters no rule covered.
    """

    def __init__(self, rows: list[ReportRow]) -> None:
        self.rows = rows

    @property
    def untouched(self) -> list[str]:
        return [r.name for r in self.rows if r.rule == "untouched"]

    def __iter__(self) -> Iterator[ReportRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __str__(self) -> str:
        header = ("parameter", "shape", "rule", "initializer", "std")
        body = [
            (r.name + (f" (= {', '.join(r.aliases)})" if r.aliases else ""), "×".join(map(str, r.shape)) or "scalar",
             r.rule, r.initializer, "—" if std is None or math.isnan(std) else f"{std:.4g}")
            for r in self.rows for std in [r.std]
        ]  # fmt: skip
        return text_table(header, body) + f"\n{len(self.rows)} parameters, {len(self.untouched)} untouched"

    def __repr__(self) -> str:
        return f"InitReport({len(self.rows)} parameters, {len(self.untouched)} untouched)"


def parameter_shape(t: Tensor) -> tuple[int, ...]:
    """The shape, or () for a lazy module's parameter, which has none until its first forward."""
    return () if is_uninitialized(t) else tuple(t.shape)


def _std(t: Tensor) -> float | None:
    if is_uninitialized(t) or is_dtensor(t):
        return None  # a DTensor's std is a collective: printing the report on one rank must not hang
    if t.is_meta or t.numel() < 2 or not (t.dtype.is_floating_point or t.dtype.is_complex):
        return None
    return float(t.detach().float().std()) if not t.dtype.is_complex else float(t.detach().abs().std())


class Policy:
    """Rules that say how to initialize each parameter of a model.

    Args:
        rules: ``(selector, spec)`` pairs; later rules override earlier ones.
        optional: the rules are a catalogue (one per kind of layer, as in presets): a rule
            that matches nothing in a given model is not reported. By default it is.

    Example:
        >>> from torchinit.schemes.initializers import KaimingNormal, Zeros
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
        >>> policy = Policy([(nn.Conv2d, {"weight": KaimingNormal(nonlinearity="relu"), "bias": Zeros()}),
        ...                  ("2.weight", Zeros())])
        >>> report = policy.apply_(model, generator=torch.Generator().manual_seed(0))
        >>> [row.rule for row in report]
        ['#0 Conv2d', '#0 Conv2d', "#1 '2.weight'", '#0 Conv2d']
        >>> bool(model[2].weight.eq(0).all())
        True
    """

    def __init__(self, rules: Iterable[tuple[Selector, Any] | Rule], *, optional: bool = False) -> None:
        if isinstance(rules, (str, bytes)) or not isinstance(rules, Iterable):
            raise TypeError(f"rules must be a list of (selector, spec) pairs; got {rules!r}")
        if not isinstance(optional, bool):
            raise TypeError(f"optional must be a bool; got {type(optional).__name__}")
        self.rules: list[Rule] = [_normalize(i, r) for i, r in enumerate(rules)]
        if optional:
            self.rules = [Rule(r.index, r.selector, r.spec, False) for r in self.rules]

    def __add__(self, other: Policy) -> Policy:
        """The rules of ``self`` then those of ``other`` (which override)."""
        if not isinstance(other, Policy):
            return NotImplemented
        return Policy([*self.rules, *other.rules])

    def __repr__(self) -> str:
        inner = ",\n".join(f"    ({r.selector_repr()}, {r.spec!r})" for r in self.rules)
        return f"Policy([\n{inner}\n])" if self.rules else "Policy([])"

    def plan(self, model: nn.Module, *, strict: bool = False) -> list[Planned]:
        """Which rule initializes each distinct parameter (the last matching rule; None if none).

        A required rule that matches no parameter, or a class rule's attribute key that
        no matched module has, gets a warning naming it; with ``strict=True``, a ValueError.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
        # selectors that need the whole model (presets.LastInBlock) are bound to it first
        rules = [Rule(r.index, r.selector.bind(model), r.spec, r.required) if hasattr(r.selector, "bind") else r
                 for r in self.rules]  # fmt: skip
        paths = _paths(model) if any(r.module_level for r in rules) else {}
        matched: set[int] = set()
        plans = [_plan_parameter(param, owners, rules, paths, matched)
                 for param, owners in named_parameter_owners(model)]  # fmt: skip
        problems = _unmatched(rules, matched, _attributes_seen(model, rules))
        if problems:
            if strict:
                raise ValueError("strict: " + "; ".join(problems))
            warn("Policy: " + "; ".join(problems), UserWarning)
        return plans

    @keeps_thread_modes
    def apply_(
        self,
        model: nn.Module,
        *,
        strict: bool = False,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> InitReport:
        """Initialize every parameter a rule covers, exactly once; leave the rest untouched.

        Tied parameters are initialized once and stay tied. Layout-aware initializers
        (the fan-based family, glass) receive the owning layer for its ``weight``,
        so ConvTranspose, grouped convs and transformers' Conv1D get their true fans.

        All or nothing: the arguments and the whole plan are checked first (every initializer runs on a
        meta copy of its target), and the tensors the call writes are copied first; if anything raises
        after that, the model and ``generator`` are put back as they were. Memory: about twice the written
        tensors at the peak. In full: ``docs/materialize.md``, "All or nothing".

        Args:
            model: the model.
            strict: raise a ValueError naming the parameters no rule covers (before writing anything).
            generator: the seed source: one number is drawn from it per call, and each parameter
                draws from a stream keyed by that number and its qualified name
                (re-seeding reproduces; two calls differ). None: the global RNG, in parameter order.
                Nothing can be drawn for a meta parameter (use :func:`~torchinit.materialize_`):
                a covered one is a ValueError.
            seed: draw from the keyed stream instead (not with ``generator``): each parameter
                gets ``init(target, seed=seed, name=qualified_name)`` and each module-level unit
                ``init(unit, seed=seed, name=unit_name)``, so a parameter's values depend only on
                ``(seed, name, shape, initializer)``: not on the order of the parameters, the
                other parameters, the device, or (for DTensor parameters) the world size.

        Returns:
            An :class:`InitReport`.
        """
        if not isinstance(strict, bool):
            raise TypeError(f"strict must be a bool; got {type(strict).__name__}")
        make_sampler(generator, seed)  # types; not both
        plans = self.plan(model, strict=strict)
        covered = _covered(plans, strict=strict, drawing="generator" if generator is not None else
                           "seed" if seed is not None else None)  # fmt: skip
        snapshot = Snapshot(model, writes=_written(covered), generator=generator)
        with snapshot.on_failure(), torch.no_grad():
            keyed = seed is not None
            base_seed = seed if keyed else derive_seed(generator)
            done: set[tuple[int, int]] = set()
            for p in covered:
                device = p.param.device
                if p.unit is None:
                    p.run(**stream_kwargs(base_seed, p.name, device, keyed, model))
                elif p.first_of_unit(done):
                    run_unit(p, plans, **stream_kwargs(base_seed, p.unit[0], device, keyed, model))
            return report_of(plans)


def _covered(plans: list[Planned], *, strict: bool, drawing: str | None) -> list[Planned]:
    """The plans a rule covers, after every check ``apply_`` makes before writing: uncovered parameters (with
    ``strict``), meta parameters when randomness is asked for (``drawing``: the argument's name), and each
    initializer's arguments on a meta copy of its target."""
    uncovered = [p.name for p in plans if p.initializer is None]
    if strict and uncovered:
        raise ValueError(f"strict: no rule covers {len(uncovered)} parameter(s): {', '.join(uncovered)}")
    covered = [p for p in plans if p.initializer is not None]
    on_meta = [p.name for p in covered if p.param.is_meta]
    if drawing is not None and on_meta:
        raise ValueError(f"{drawing}: nothing can be drawn for meta parameters ({', '.join(on_meta)}); "
                         "give them memory and values with torchinit.materialize_")
    for p in covered:
        check_on_meta(p)
    return covered


def _written(covered: list[Planned]) -> list[Tensor]:
    """What applying ``covered`` writes in place: each covered parameter, and every tensor of a module-level unit."""
    return [t for p in covered for t in
            ([p.param] if p.unit is None else [*p.unit[1].parameters(), *p.unit[1].buffers()])]  # fmt: skip


def _plan_parameter(param: Tensor, owners: list[Owner], rules: list[Rule],
                    paths: dict[int, list[tuple[str, nn.Module]]], matched: set[int]) -> Planned:
    """The plan of one parameter: the last rule that matches it at any of its places wins; ``matched`` collects
    the index of every rule that matched (overridden or not)."""
    plan = Planned(param, owners)
    for rule in rules:
        for owner in owners:
            assignment = rule.assign(owner, param, paths)
            if assignment is not None:
                plan.rule, plan.source = rule, rule.describe()
                plan.initializer, plan.unit = assignment
                matched.add(rule.index)
    return plan


def _attributes_seen(model: nn.Module, rules: list[Rule]) -> dict[int, set[str]]:
    """For each class rule, the parameter attribute names of the modules it selects."""
    seen: dict[int, set[str]] = {r.index: set() for r in rules if isinstance(r.selector, type)}
    for module in model.modules():
        for r in rules:
            if isinstance(r.selector, type) and isinstance(module, r.selector):
                seen[r.index].update(module._parameters)
    return seen


def _unmatched(rules: list[Rule], matched: set[int], seen: dict[int, set[str]]) -> list[str]:
    """The mistakes a plan shows: required rules that match nothing, class-rule keys no selected module has."""
    problems = []
    for r in rules:
        if not r.required:
            continue
        is_class = isinstance(r.selector, type)
        if r.index not in matched and not (is_class and seen[r.index]):
            problems.append(f"rule {r.describe()} matches no parameter")
        elif is_class and isinstance(r.spec, dict):  # a module-level rule names no attribute
            missing = [k for k in r.spec if k not in seen[r.index]]
            if missing:
                have = ", ".join(sorted(seen[r.index])) or "none"
                problems.append(f"rule {r.describe()}: no {r.selector.__name__} has a parameter named "  # type: ignore[union-attr]
                                f"{', '.join(map(repr, missing))} (they have: {have})")
    return problems


def _paths(model: nn.Module) -> dict[int, list[tuple[str, nn.Module]]]:
    """For every module, its chain of (qualified name, module) from the root down to itself."""
    paths: dict[int, list[tuple[str, nn.Module]]] = {id(model): [("", model)]}

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            if id(child) in paths:
                continue
            qualified = f"{prefix}.{name}" if prefix else name
            paths[id(child)] = [*paths[id(module)], (qualified, child)]
            walk(child, qualified)

    walk(model, "")
    return paths


def run_unit(p: Planned, plans: list[Planned], *, target: nn.Module | None = None,
             values: Callable[[Tensor], Tensor | None] | None = None, **randomness: Any) -> None:
    """Run ``p``'s module-level initializer on its unit, or on ``target`` (a stand-in of the unit); the values
    of parameters in the unit that other rules cover are kept as they were.

    ``values(param)``: the tensor that holds a parameter's values (the staged tensor a stand-in writes to;
    None: nothing to keep); by default the parameter itself.
    """
    assert p.unit is not None and p.initializer is not None
    unit = p.unit[1]
    mine = {id(q.param) for q in plans if q.rule is p.rule and q.unit is not None and q.unit[1] is unit}
    held = [values(o) if values is not None else o for o in unit.parameters() if id(o) not in mine]
    keep = [(t, t.detach().clone()) for t in held if t is not None]
    p.initializer.init(unit if target is None else target, **randomness)
    for t, saved in keep:
        t.copy_(saved)


def check_on_meta(p: Planned) -> None:
    """Run ``p``'s initializer on a meta copy of its target: every argument error surfaces, nothing is written."""
    assert p.initializer is not None
    if p.unit is not None:
        return  # module-level schemes take no settings that could be wrong
    target = p.target()
    ghost: nn.Module | Tensor
    if isinstance(target, nn.Module):
        ghost = module_stand_in(target, lambda t: t if is_uninitialized(t) else torch.empty_like(t, device="meta"))
    else:
        ghost = torch.empty_like(target, device="meta")
    try:
        with quiet():  # the real call warns
            p.initializer.init(ghost)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{p.name} ({p.source}, {p.initializer!r}): {err}") from None


def report_of(plans: list[Planned]) -> InitReport:
    return InitReport([
        ReportRow(p.name, parameter_shape(p.param), p.source,
                  p.detail or (repr(p.initializer) if p.initializer else "—"), p.param, [o.name for o in p.owners[1:]])
        for p in plans
    ])  # fmt: skip
