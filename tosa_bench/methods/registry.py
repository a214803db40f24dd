"""The method registry: every token-reduction method is declared once, in its own file.

A method file defines its reducer (the block loop, :mod:`.base` says the contract) and a
:class:`Method` subclass that says everything the rest of the project needs to know
about it, then registers it with :func:`register`. Nothing outside ``methods/`` branches
on a method's name: the CLI's variant choices, suite validation, grid expansion,
``--match gmacs``, the analytic MAC formula, the tables' labels and ``tosa-bench models``
all ask the registry.

What a :class:`Method` declares:

- ``name`` (the variant name used in suites, records and ``build_model``), ``display``
  (table/figure label), ``order`` (row order in tables), ``summary`` (one line);
- ``options``: each build option with its type, default, allowed values and a checker;
- ``keep_meaning``: what ``--keep`` means for it, and :meth:`Method.natural_options`,
  the mapping itself; :meth:`Method.grid_options` the points a sweep makes of one keep;
- :meth:`Method.token_counts`: the tokens every block will see (no forward pass);
- :meth:`Method.extra_macs`: the MACs of its own modules and computations;
- :meth:`Method.setting_label`: a short description of one setting for tables;
- ``colour`` and ``marker``: its look in every figure (one colour and marker per method,
  the same in every figure); :meth:`Method.curve_label` (what separates two curves of
  the method in a figure, e.g. ToSA's placement) and :meth:`Method.point_label` (the
  label of one point on a curve: its keep, or ToMe's r);
- optionally :meth:`Method.match_gmacs`: a setting at a target cost (``--match gmacs``).

After a forward, every reducer exposes ``last_selection`` (block -> :class:`~.base.BlockSelection`):
which tokens ran a block (ToSA, random), were kept (EViT), or formed each merged token
(ToMe), in original token positions, for token pictures.

Registering a method from outside the package (a test, a plugin) is one call::

    register(MyMethod())

The built-in methods register themselves when the registry is first asked.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from tosa_bench.errors import OptionError

if TYPE_CHECKING:  # pragma: no cover
    from tosa_bench.methods.base import BlockTokens, TokenReducer
    from tosa_bench.models.configs import ViTConfig

#: the modules that declare the built-in methods, imported on first use of the registry
BUILTIN_MODULES = ("tosa_bench.methods.dense", "tosa_bench.methods.tosa", "tosa_bench.methods.tome", "tosa_bench.methods.evit")
#: the name of the reference every ratio is taken against (dense: every block on every token)
DENSE = "dense"


@dataclass(frozen=True)
class OptionSpec:
    """One build option of a method.

    ``type``: a short type name for help and ``tosa-bench models`` ("float", "int",
    "bool", "str", "int | list[int]"...). ``allowed``: the allowed values in words.
    ``check``: validates one value (raises :class:`~tosa_bench.errors.OptionError` naming
    the option) and returns it normalised; the reducer applies the same checker.
    """

    name: str
    type: str
    default: Any
    allowed: str
    help: str
    check: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class Knobs:
    """Method settings a sweep or a command gives alongside ``keep``; each method reads
    the ones it has (ToSA placement and importance, the random control's seed, ToMe's
    explicit r, EViT's locations and fusing). Tuples are the grid's lists; a single
    point (``profile``, ``eval``) uses at most one value of each.

    ``placements``: ToSA/random placement specs ("alternate", (3, 5, 7)); () = default.
    ``tome_r``: explicit ToMe r values (replace the keep mapping); () = from keep.
    ``evit_locations``: EViT pruning-block lists; () = default.
    """

    placements: tuple[Any, ...] = ()
    importance: str | None = None
    seed: int = 0
    tome_r: tuple[int, ...] = ()
    evit_locations: tuple[tuple[int, ...], ...] = ()
    fuse: bool = True


@dataclass(frozen=True)
class GridEntry:
    """One point a method makes for the grid: its build ``options`` and the grid label of
    its placement (None where the method has none)."""

    options: dict[str, Any]
    placement: str | None = None


class Method:
    """Declaration of one method (see module docstring). Subclass, set the class
    attributes, override the hooks the method needs, and :func:`register` an instance."""

    name: str = ""
    display: str = ""
    order: int = 50
    summary: str = ""
    keep_meaning: str = "ignored"
    options: tuple[OptionSpec, ...] = ()
    #: trained selector weights (``--selector``) apply to this method
    accepts_selector: bool = False
    #: ``--match gmacs`` matches the other methods to this one's cost at each keep
    match_target: bool = False
    #: a control condition (the random choice of tokens), not a method under study: the
    #: demo draws token pictures of the methods only
    control: bool = False
    #: tokens a block does not choose bypass it and come back for the next one
    #: (``BlockSelection`` kind "ran"), so each patch runs some of the choosing blocks
    bypasses: bool = False
    #: look in figures (a matplotlib colour and marker); None: the figures pick a free
    #: colour of their colour-blind-safe palette from the name, the same every time
    colour: str | None = None
    marker: str | None = None

    # ------------------------------------------------------------------ building
    def reducer(self, **options: Any) -> "TokenReducer":
        """A new, unbound reducer with ``options`` (validated by the reducer)."""
        raise NotImplementedError

    def option_names(self) -> list[str]:
        return [o.name for o in self.options]

    # ------------------------------------------------------------------ what keep means
    def natural_options(self, keep: float | None, cfg: "ViTConfig", knobs: Knobs = Knobs()) -> dict[str, Any]:
        """Build options for one point at ``keep`` (None: the method's default keep),
        using the first value of each knob."""
        return {}

    def grid_options(self, keep: float | None, cfg: "ViTConfig", knobs: Knobs) -> list[GridEntry]:
        """The grid points this method makes for ``keep`` (None: the points that are not
        tied to a keep, e.g. dense, or ToMe's explicit r values). Default: one point at
        each keep from :meth:`natural_options`, none without a keep."""
        if keep is None:
            return []
        return [GridEntry(self.natural_options(keep, cfg, knobs))]

    def match_gmacs(
        self, keep: float, cfg: "ViTConfig", knobs: Knobs, target_gmacs: float, gmacs_of: Callable[[dict[str, Any]], float]
    ) -> list[tuple[dict[str, Any], float]] | None:
        """For ``--match gmacs``: per point this method would make at ``keep``, the build
        options whose cost is closest to ``target_gmacs`` (GMACs per image) and that cost;
        ``gmacs_of(options)`` gives a candidate's cost in closed form. None when the method
        is not matched (the grid then takes its usual :meth:`grid_options`)."""
        return None

    # ------------------------------------------------------------------ cost
    def token_counts(self, reducer: "TokenReducer", num_tokens: int) -> list["BlockTokens"]:
        """Tokens every block of a bound ``reducer`` will process at ``num_tokens`` input
        tokens (CLS included), derived from the options alone (no forward pass)."""
        from tosa_bench.methods.base import BlockTokens

        return [BlockTokens(num_tokens, num_tokens) for _ in range(reducer.depth)]

    def extra_macs(self, cfg: "ViTConfig", reducer: "TokenReducer", counts: Sequence["BlockTokens"], block: int) -> tuple[int, int]:
        """(inside, outside) MACs per image the method adds to ``block`` on top of the
        plain block: inside = in its own modules (counted under ``reducer.selectors.<i>``
        or in the block), outside = computed outside any module (counted under
        ``reducer``). Same conventions as :mod:`tosa_bench.measure.analytic`."""
        return 0, 0

    def final_tokens(self, counts: Sequence["BlockTokens"], num_tokens: int) -> int:
        """Tokens handed to the final norm: what the last block put out."""
        return counts[-1].mlp

    # ------------------------------------------------------------------ labels
    def setting_label(self, options: Mapping[str, Any], record: Mapping[str, Any]) -> str:
        """A short description of one setting for tables ("keep 0.5 @ alternate")."""
        return "-"

    def curve_label(self, options: Mapping[str, Any], record: Mapping[str, Any]) -> str:
        """What tells two curves of this method apart in a figure whose x axis sweeps
        the keep ("" when every setting of the method lies on one curve)."""
        return ""

    def point_label(self, options: Mapping[str, Any], keep: float | None) -> str:
        """The label of one point on a curve: its grid keep ("0.5"); "" without one."""
        return f"{keep:g}" if keep is not None else ""

    def __repr__(self) -> str:
        return f"<method {self.name}>"


_REGISTRY: dict[str, Method] = {}
_loaded = False


def register(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry (``replace`` to redefine a name); returns it."""
    if not method.name or not method.name.isidentifier():
        raise ValueError(f"a method needs a name that is an identifier, got {method.name!r}")
    if method.name in _REGISTRY and not replace and _REGISTRY[method.name] is not method:
        raise ValueError(f"method {method.name!r} is registered already")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (tests that register one of their own clean up with this)."""
    _REGISTRY.pop(name, None)


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def names() -> tuple[str, ...]:
    """Every registered method, in table order."""
    _ensure_loaded()
    return tuple(sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].order, n)))


def selector_takers() -> tuple[str, ...]:
    """The registered methods that take trained selector weights (``accepts_selector``)."""
    return tuple(n for n in names() if _REGISTRY[n].accepts_selector)


def bypassers() -> tuple[str, ...]:
    """The registered methods whose unchosen tokens bypass a block and come back (``bypasses``)."""
    return tuple(n for n in names() if _REGISTRY[n].bypasses)


def builtin_names() -> tuple[str, ...]:
    """The methods that ship with tosa-bench (the default run sweeps these)."""
    _ensure_loaded()
    return tuple(n for n in names() if type(_REGISTRY[n]).__module__ in BUILTIN_MODULES)


def get(name: str) -> Method:
    """The method called ``name``; :class:`~tosa_bench.errors.OptionError` naming the known ones otherwise."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise OptionError(f"variant: unknown variant {name!r}; known variants: {', '.join(names())}") from None


def for_reducer(reducer: "TokenReducer") -> Method:
    """The method a reducer instance belongs to (by its ``variant`` name)."""
    return get(reducer.variant)


def is_dense(name: str) -> bool:
    """True for the reference method every ratio is taken against."""
    return name == DENSE


def match_target() -> Method | None:
    """The method ``--match gmacs`` matches the others to (ToSA), if registered."""
    return next((get(n) for n in names() if get(n).match_target), None)


def bound_reducer(cfg: "ViTConfig", variant: str, options: Mapping[str, Any]) -> "TokenReducer":
    """``variant``'s reducer built with ``options`` and bound to ``cfg``: validates them
    (an :class:`~tosa_bench.errors.OptionError` for an unknown option, a bad keep,
    placement past the depth...)."""
    method = get(variant)
    check_option_names(method, options)
    reducer = method.reducer(**dict(options))
    reducer.bind(cfg)
    return reducer


def check_option_names(method: Method, options: Mapping[str, Any]) -> None:
    allowed = method.option_names()
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise OptionError(f"{unknown[0]}: not an option of the {method.name} variant (options: {', '.join(allowed) or 'none'})")


def expected_token_counts(reducer: "TokenReducer", num_tokens: int) -> list["BlockTokens"]:
    """Per-block token counts of a bound ``reducer`` from its options alone: the
    independent side of the check against ``model.token_counts`` after a forward, and
    the input of the analytic MAC formula."""
    return for_reducer(reducer).token_counts(reducer, num_tokens)
