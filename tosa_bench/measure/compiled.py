"""Compiled models as a measurement axis: compile outside the timed window, never inside.

A point with ``Point.compile`` set runs its model (and its dense twin, compiled the same
way) through ``torch.compile(model, mode=...)``. What this module guarantees:

- **Compile time is measured, and never timed as a step.** :func:`compile_and_warm` calls
  the compiled model on the point's own inputs until a call compiles nothing new (at most
  :data:`MAX_WARM_CALLS` calls; a method with a data-dependent branch may need more than
  one), synchronising the device after each, and reports the wall time of those calls as
  ``compile_s`` (first compile, any recompile, and their forwards). Timing starts after.
- **No recompilation inside timing.** The timed phases run under
  :func:`no_recompiles` (``torch.compiler.set_stance("fail_on_recompile")``): a guard that
  fails there raises :class:`RecompiledWhileTimed`, which fails the point with its reason
  instead of timing a compile as a forward.
- **A fresh start per point.** Dynamo's caches are reset before a point compiles
  (:func:`fresh_compile`), so an earlier point's graphs neither count against the
  recompile limit nor stand in for this point's.

What the record states (:func:`CompileInfo.fields`): the mode, ``compile_s`` of the
variant and of its dense twin (seconds, wall clock), the graphs dynamo made and the graph
breaks it hit while compiling (a break splits the forward into separately compiled
pieces with eager Python between them), and under ``reduce-overhead`` how many of those
graphs replay as CUDA graphs, for the variant and its twin (``compile_cuda_graphs``:
"6 of 6 graphs captured"; inductor's own count of graphs it left uncaptured). On a CPU
``reduce-overhead`` has nothing to capture ("0 of 1 graphs captured") and runs as
``default``; the record still names the mode asked for.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

#: what a record's ``conventions`` say of its compile fields
COMPILE_CONVENTION = ("compile: torch.compile mode or false (eager); the dense twin compiled the same way; compile_s: "
                      "seconds of wall time to compile and warm, never timed; a recompile while timed fails the point")
#: calls of a compiled model, at most, before timing: the first compiles; later ones
#: compile only where a guard failed (e.g. a shape or branch seen for the first time)
MAX_WARM_CALLS = 4
_RECOMPILE_TEXT = "Detected recompile"


class RecompiledWhileTimed(RuntimeError):
    """A compiled model compiled again during a timed phase: its time would include a
    compile, so the point fails with this reason instead."""


@dataclass(frozen=True)
class CompileInfo:
    """How one model was compiled before timing: ``compile_s`` seconds of wall time for
    ``calls`` warm-up calls (the last compiled nothing new), ``graphs`` graphs dynamo made
    and ``graph_breaks`` breaks it hit."""

    mode: str
    compile_s: float
    calls: int
    graphs: int
    graph_breaks: int
    #: graphs inductor compiled without CUDA graphs although the mode asked for them
    #: (``reduce-overhead``): on a CPU every graph; on CUDA one with, e.g., a CPU tensor
    #: or an op that cannot be captured
    cuda_graph_skips: int = 0

    @property
    def cuda_graphs(self) -> str | None:
        """What a record says of CUDA graphs: None where the mode does not use them, else
        how many of the compiled graphs replay as CUDA graphs ("6 of 6 graphs captured")."""
        if self.mode != "reduce-overhead":
            return None
        return f"{max(0, self.graphs - self.cuda_graph_skips)} of {self.graphs} graphs captured"


def _dynamo_counts() -> tuple[int, int]:
    """(graphs compiled, graph breaks) so far in this process, from dynamo's counters."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"]), int(sum(counters["graph_break"].values()))


def _cuda_graph_skips() -> int:
    """Graphs inductor compiled so far without the CUDA graphs their mode asked for (its
    ``cudagraph_skips`` counter)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def fresh_compile() -> None:
    """Forget every graph compiled so far (dynamo's code caches and counters), so the next
    point compiles from scratch and its counts are its own."""
    torch._dynamo.reset()


def compile_and_warm(model: torch.nn.Module, mode: str, call: Callable[[Callable[..., Any]], None],
                     sync: Callable[[], None] = lambda: None) -> tuple[Callable[..., Any], CompileInfo]:
    """``torch.compile(model, mode=mode)`` and warm it: ``call(runner)`` runs one forward
    of the point's inputs; it is repeated until a call compiles no new graph (or
    :data:`MAX_WARM_CALLS` calls). Returns the compiled runner and its :class:`CompileInfo`
    (``sync`` waits for the device after each call, so ``compile_s`` holds the device work
    too)."""
    (runner,), (info,) = compile_and_warm_together([model], mode, call, sync)
    return runner, info


def compile_and_warm_together(models: Sequence[torch.nn.Module], mode: str, call: Callable[[Callable[..., Any]], None],
                              sync: Callable[[], None] = lambda: None) -> tuple[list[Callable[..., Any]], list[CompileInfo]]:
    """:func:`compile_and_warm` for models that will be timed in alternation (a variant
    and its dense twin): they share code (the same ViT forward), so one's compile can add
    a cache entry the other's next call must pass a guard for. Rounds call each model
    once, in order, until a whole round compiles nothing new (at most
    :data:`MAX_WARM_CALLS` rounds); each model's info counts its own calls."""
    runners = [torch.compile(m, mode=mode) for m in models]
    spent = [0.0] * len(models)
    graphs = [0] * len(models)
    breaks = [0] * len(models)
    skips = [0] * len(models)
    rounds = 0
    while rounds < MAX_WARM_CALLS:
        new_in_round = 0
        for i, runner in enumerate(runners):
            g0, b0 = _dynamo_counts()
            s0 = _cuda_graph_skips()
            t0 = time.perf_counter()
            call(runner)
            sync()
            spent[i] += time.perf_counter() - t0
            g1, b1 = _dynamo_counts()
            graphs[i] += g1 - g0
            breaks[i] += b1 - b0
            skips[i] += _cuda_graph_skips() - s0
            new_in_round += g1 - g0
        rounds += 1
        if rounds > 1 and new_in_round == 0:
            break
    return runners, [CompileInfo(mode, spent[i], rounds, graphs[i], breaks[i], skips[i]) for i in range(len(models))]


@contextlib.contextmanager
def no_recompiles(what: str) -> Iterator[None]:
    """Run a timed phase of compiled models: a recompile inside raises
    :class:`RecompiledWhileTimed` naming ``what`` (e.g. "throughput") and dynamo's reason.
    Where torch has no ``set_stance`` (before 2.6) the phase runs and dynamo's graph count
    is compared after it: a graph compiled inside fails the point all the same."""
    if not hasattr(torch.compiler, "set_stance"):
        graphs0, _ = _dynamo_counts()
        yield
        new = _dynamo_counts()[0] - graphs0
        if new:
            raise RecompiledWhileTimed(f"torch.compile compiled {new} new graph(s) during the {what} timing; "
                                       "the point is not timed (compile time would count as a forward)")
        return
    try:
        with torch.compiler.set_stance("fail_on_recompile"):
            yield
    except RuntimeError as err:
        text = str(err)
        if _RECOMPILE_TEXT not in text:
            raise
        guard = next((ln.strip(" -") for ln in text.splitlines() if ln.strip().startswith("- ")), "a guard failed")
        raise RecompiledWhileTimed(f"torch.compile recompiled during the {what} timing ({guard[:200]}); "
                                   "the point is not timed (compile time would count as a forward)") from None


def maybe_no_recompiles(compiled: bool, what: str) -> contextlib.AbstractContextManager[None]:
    """:func:`no_recompiles` for compiled models, nothing for eager ones."""
    return no_recompiles(what) if compiled else contextlib.nullcontext()


def compile_fields(variant: CompileInfo | None, dense: CompileInfo | None = None) -> dict[str, Any]:
    """The record's compile fields: the mode and the variant's (and its dense twin's)
    compile seconds, warm-up calls, graphs and graph breaks; None for an eager point."""
    if variant is None:
        return {"compile_s": None, "compile_s_dense": None, "compile_calls": None, "compile_graphs": None, "compile_graph_breaks": None,
                "compile_cuda_graphs": None, "compile_cuda_graphs_dense": None}
    return {
        "compile_cuda_graphs": variant.cuda_graphs,
        "compile_cuda_graphs_dense": dense.cuda_graphs if dense is not None else None,
        "compile_s": variant.compile_s,
        "compile_s_dense": dense.compile_s if dense is not None else None,
        "compile_calls": variant.calls,
        "compile_graphs": variant.graphs,
        "compile_graph_breaks": variant.graph_breaks,
    }
