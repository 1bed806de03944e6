"""`make mutation`: mutate the pure core and the wire contract, and require their tests to notice.

A small runner of our own rather than mutmut or cosmic-ray: the code lives in a src layout under
operator/src (which those tools handle with workarounds), and each module is judged against its
own unit tests only, which a table here says outright. Each mutant is one AST change (a comparison,
a boolean operator, arithmetic, a constant, a dropped `not`); the mutated package is a copy put
first on PYTHONPATH, so the working tree is never touched and an interrupted run leaves nothing
behind. A mutant is killed when its tests fail or hang.

Equivalent mutants (no test can tell them apart from the original) are listed in
hack/mutation-equivalents.txt, each with why; they count as neither killed nor survived.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "operator" / "src"
EQUIVALENTS = ROOT / "hack" / "mutation-equivalents.txt"
THRESHOLD = 0.90
TIMEOUT_SECONDS = 120

# Each module, and the unit tests that are its specification.
TARGETS: dict[str, tuple[str, ...]] = {
    "newfuse/core/rollout.py": (
        "test_rollout_decide.py", "test_rollout_transitions.py", "test_rollout_gates.py",
    ),
    "newfuse/core/gates.py": (
        "test_rollout_decide.py", "test_rollout_gates.py", "test_rollout_transitions.py",
    ),
    "newfuse/core/allocation.py": ("test_rollout_decide.py", "test_rollout_gates.py"),
    "newfuse/core/actions.py": ("test_actions.py", "test_rollout_action_contract.py"),
    "newfuse/core/rolloutstep.py": ("test_rolloutstep.py", "test_reconcile.py"),
    "newfuse/core/planner.py": ("test_planner.py", "test_planner_edges.py"),
    "newfuse/core/status.py": ("test_status.py", "test_status_edges.py"),
    "newfuse/wire/envelope.py": (
        "test_envelope.py", "test_envelope_bounds.py", "test_signing.py", "test_signing_vectors.py",
    ),
}  # fmt: skip

_SWAPS: dict[type[ast.AST], type[ast.AST]] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.And: ast.Or, ast.Or: ast.And,
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
}  # fmt: skip


@dataclass(frozen=True)
class Mutant:
    """One change to one module: where, and what (``Lt->LtE``, ``1->2``, ``drop not``)."""

    module: str
    index: int
    line: int
    what: str

    @property
    def key(self) -> str:
        """Stable enough to list in the equivalents file: module, line and change."""
        return f"{self.module}:{self.line} {self.what}"


def _skipped(node: ast.AST) -> set[int]:
    """Ids of nodes never mutated: annotations, docstrings, __all__, log and f-string parts."""
    skip: set[int] = set()
    for parent in ast.walk(node):
        for name in ("annotation", "returns"):
            child = getattr(parent, name, None)
            if isinstance(child, ast.AST):
                skip |= {id(n) for n in ast.walk(child)}
        if isinstance(parent, ast.JoinedStr):
            skip |= {id(n) for n in ast.walk(parent)}
        if isinstance(parent, ast.Call) and _is_log_call(parent.func):
            skip |= {id(n) for n in ast.walk(parent)}
    return skip


def _is_log_call(func: ast.expr) -> bool:
    return isinstance(func, ast.Attribute) and func.attr in {"debug", "info", "warning", "error"}


def _points(tree: ast.AST) -> Iterator[tuple[ast.AST, str, int]]:
    """(node, change, which operand) for every mutation point, in a fixed order."""
    skip = _skipped(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in _SWAPS:
                    yield node, f"{type(op).__name__}->{_SWAPS[type(op)].__name__}", i
        elif isinstance(node, ast.BoolOp | ast.BinOp):
            op = node.op
            if type(op) in _SWAPS:
                yield node, f"{type(op).__name__}->{_SWAPS[type(op)].__name__}", 0
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            yield node, "drop not", 0
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
            yield node, f"{node.value!r}->{_changed(node.value)!r}", 0


def _changed(value: object) -> object:
    if isinstance(value, bool):
        return not value
    assert isinstance(value, int | float)
    return value + 1


class _Apply(ast.NodeTransformer):
    def __init__(self, target: ast.AST, operand: int) -> None:
        self.target, self.operand = target, operand

    def visit(self, node: ast.AST) -> ast.AST:
        if node is not self.target:
            return super().visit(node)
        if isinstance(node, ast.Compare):
            node.ops[self.operand] = _SWAPS[type(node.ops[self.operand])]()  # type: ignore[assignment]
        elif isinstance(node, ast.BoolOp | ast.BinOp):
            node.op = _SWAPS[type(node.op)]()  # type: ignore[assignment]
        elif isinstance(node, ast.UnaryOp):
            return node.operand
        elif isinstance(node, ast.Constant):
            node.value = _changed(node.value)
        return node


def mutants_of(module: str) -> list[Mutant]:
    """Every mutant of ``module`` (a path under operator/src)."""
    tree = ast.parse((SRC / module).read_text())
    return [
        Mutant(module, i, getattr(node, "lineno", 0), what)
        for i, (node, what, _) in enumerate(_points(tree))
    ]


def mutated_source(mutant: Mutant) -> str:
    """The module's source with only ``mutant`` applied."""
    tree = ast.parse((SRC / mutant.module).read_text())
    node, _, operand = list(_points(tree))[mutant.index]
    return ast.unparse(ast.fix_missing_locations(_Apply(node, operand).visit(tree)))


def killed(mutant: Mutant, workdir: Path) -> bool:
    """Run the module's tests against a copy of the package with the mutant in it."""
    src = workdir / f"m{mutant.index}-{mutant.module.replace('/', '_')}"
    shutil.copytree(SRC / "newfuse", src / "newfuse")
    (src / mutant.module).write_text(mutated_source(mutant))
    tests = [str(ROOT / "tests" / "unit" / name) for name in TARGETS[mutant.module]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(ROOT / "hack")])}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
               *tests]  # fmt: skip
    try:
        result = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, timeout=TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        return True
    finally:
        shutil.rmtree(src, ignore_errors=True)
    return result.returncode != 0


def _equivalents() -> dict[str, str]:
    found = {}
    for line in EQUIVALENTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, why = line.partition("  # ")
            found[key.strip()] = why.strip()
    return found


def main() -> int:
    """Run every mutant; print a table per module and the survivors; fail under the threshold."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="modules under operator/src (default: all)")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    modules = args.modules or list(TARGETS)
    equivalent = _equivalents()
    every = [m for module in modules for m in mutants_of(module)]
    todo = [m for m in every if m.key not in equivalent]
    print(f"{len(every)} mutants in {len(modules)} modules, {len(every) - len(todo)} equivalent")
    started = time.monotonic()
    results: dict[Mutant, bool] = {}
    with (
        tempfile.TemporaryDirectory(prefix="newfuse-mutation-") as tmp,
        ThreadPoolExecutor(args.jobs) as pool,
    ):
        for done, (mutant, was_killed) in enumerate(
            zip(todo, pool.map(lambda m: killed(m, Path(tmp)), todo), strict=True), 1
        ):
            results[mutant] = was_killed
            mark = "." if was_killed else "S"
            print(mark, end="\n" if done % 60 == 0 else "", flush=True)
    print(f"\n{time.monotonic() - started:.0f}s\n")
    print(f"{'module':<32} {'mutants':>8} {'killed':>7} {'equiv.':>7} {'score':>7}")
    for module in modules:
        mine = [m for m in results if m.module == module]
        kills = sum(results[m] for m in mine)
        equiv = sum(1 for m in every if m.module == module and m.key in equivalent)
        score = kills / len(mine) if mine else 1.0
        print(f"{module:<32} {len(mine) + equiv:>8} {kills:>7} {equiv:>7} {score:>7.1%}")
    total = sum(results.values()) / len(results) if results else 1.0
    print(f"{'total':<32} {len(every):>8} {sum(results.values()):>7} "
          f"{len(every) - len(todo):>7} {total:>7.1%}")  # fmt: skip
    survivors = [m for m in todo if not results[m]]
    if survivors:
        print("\nsurvivors:")
        for mutant in survivors:
            print(f"  {mutant.key}")
    ok = total >= THRESHOLD
    print(f"\n{total:.1%} killed: {'at least' if ok else 'below'} {THRESHOLD:.0%}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
