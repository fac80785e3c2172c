"""Function and module lengths per package: median / p90 / max, and what is over the limits.

    python scripts/sizes.py            # the table; exit 1 when a library function is over 60 lines or a
                                       # module over 400 (the training recipe is allowed to be one long read)

A function's length is its lines from `def` to its last statement (decorators and docstring included), as
`ast` reports them; a nested function counts inside its parent and on its own. Packages are the stage
folders plus infra/ and demo/; tests, bench and scripts are measured but never fail the check.
"""

from __future__ import annotations

import ast
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ("ingest", "curation", "retrain", "abtest", "serving", "infra", "demo")
OTHER = ("tests", "bench", "scripts")
MAX_FUNCTION, MAX_MODULE = 60, 400
EXEMPT_MODULES = {"retrain/recipe.py"}  # one readable recipe, top to bottom (STYLE.md)


def functions(tree: ast.AST) -> list[tuple[str, int, int]]:
    """(name, first line, length) of every function and method in a module."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            out.append((node.name, node.lineno, node.end_lineno - start + 1))
    return out


def measure(package: str) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """([(module, lines)], [(module:line name, lines)]) for one package."""
    modules, funcs = [], []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        modules.append((rel, len(text.splitlines())))
        funcs += [(f"{rel}:{line} {name}", n) for name, line, n in functions(ast.parse(text))]
    return modules, funcs


def spread(values: list[int]) -> str:
    if not values:
        return f"{'-':>7}{'-':>6}{'-':>6}"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"{statistics.median(ordered):>7.0f}{p90:>6}{ordered[-1]:>6}"


def main() -> int:
    print(
        f"{'package':<10}{'modules':>8}{'median':>7}{'p90':>6}{'max':>6}   "
        f"{'functions':>9}{'median':>7}{'p90':>6}{'max':>6}"
    )
    over = []
    for package in LIBRARY + OTHER:
        modules, funcs = measure(package)
        modules = [(m, n) for m, n in modules if n > 0]
        print(
            f"{package:<10}{len(modules):>8}{spread([n for _, n in modules])}   {len(funcs):>9}"
            f"{spread([n for _, n in funcs])}"
        )
        if package in LIBRARY:
            over += [f"module   {m}: {n} lines" for m, n in modules if n > MAX_MODULE and m not in EXEMPT_MODULES]
            over += [
                f"function {f}: {n} lines"
                for f, n in funcs
                if n > MAX_FUNCTION and f.split(":")[0] not in EXEMPT_MODULES
            ]
    print(
        f"\nover the limits (library functions > {MAX_FUNCTION} lines, modules > {MAX_MODULE}; "
        f"{', '.join(sorted(EXEMPT_MODULES))} exempt): {len(over) or 'none'}"
    )
    for line in over:
        print(f"  {line}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
