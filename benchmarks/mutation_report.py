"""Mutation testing report: per module, mutants total / killed / survived / timeout and the kill rate.

`make mutation` runs this around `mutmut run`: first with `--check-config`, which checks that the modules mutmut
mutates (`only_mutate` in pyproject.toml's [tool.mutmut]) and the tests it runs
(`pytest_add_cli_args_test_selection`) pair up, `pipeline/<module>.py` with `tests/test_<module>.py`; then to
read mutmut's results in mutants/ and print the table and every mutant not killed. The kill rate counts timeouts
as kills (tests that hang catch the mutant) and anything else (survived, no tests, ...) as not killed, including
the survivors judged equivalent in benchmarks/mutation_equivalents.toml, which the table counts and the list marks.

    python benchmarks/mutation_report.py --check-config
    python benchmarks/mutation_report.py --fail-under 90
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections import Counter
from pathlib import Path

from mutmut.__main__ import find_mutant, get_diff_for_mutant
from mutmut.configuration import config
from mutmut.mutation.data import SourceFileMutationData
from mutmut.stats import status_by_exit_code

MODULE_DIR, TEST_DIR = Path("pipeline"), Path("tests")
EQUIVALENTS = Path(__file__).with_name("mutation_equivalents.toml")
DETECTED = ("killed", "timeout")


def check_config(only_mutate: list[str], test_selection: list[str]) -> list[str]:
    """Problems with the pairing `pipeline/<module>.py` -> `tests/test_<module>.py`; none if it holds."""
    problems = [f"only_mutate: {m} is not a file {MODULE_DIR}/<module>.py" for m in only_mutate if not _is_module(m)]
    expected = [str(TEST_DIR / f"test_{Path(m).stem}.py") for m in only_mutate]
    if test_selection != expected:
        problems.append(
            f"pytest_add_cli_args_test_selection is {test_selection}; with only_mutate {only_mutate} it must be"
            f" {expected}: each module's own unit tests, in the same order"
        )
    problems += [f"{t} does not exist: write the module's unit tests first" for t in expected if not Path(t).is_file()]
    return problems


def _is_module(path: str) -> bool:
    return Path(path).parent == MODULE_DIR and Path(path).suffix == ".py" and Path(path).is_file()


def module_statuses(path: str) -> dict[str, str]:
    """Status of each mutant of one module ('killed', 'survived', 'timeout', 'no tests', ...), from mutants/."""
    data = SourceFileMutationData(path=path)
    data.load()
    if not data.exit_code_by_key:
        raise SystemExit(f"{data.meta_path}: no mutmut results; run `make mutation` first.")
    return {name: status_by_exit_code[code] for name, code in data.exit_code_by_key.items()}


def load_equivalents(path: Path = EQUIVALENTS) -> dict[str, tuple[str, str]]:
    """Mutant name -> (its mutated line, why it is equivalent), from the judged survivors' file."""
    groups = tomllib.loads(path.read_text())["equivalent"]
    return {name: (line, group["because"]) for group in groups for name, line in group["mutants"].items()}


def mutated_lines(name: str) -> tuple[str, str]:
    """The lines a mutant replaced and its own, each stripped and joined with ` / `, from its diff."""
    diff = get_diff_for_mutant(name, path=find_mutant(name).path).splitlines()
    old = [line[1:].strip() for line in diff if line.startswith("-") and not line.startswith("---")]
    new = [line[1:].strip() for line in diff if line.startswith("+") and not line.startswith("+++")]
    return " / ".join(old), " / ".join(new)


def _mutant_order(name: str) -> tuple[str, int]:
    function, _, number = name.rpartition("_")
    return function, int(number) if number.isdigit() else -1


def report(only_mutate: list[str], fail_under: float) -> int:
    equivalents = load_equivalents()
    header = (
        f"{'module':<28}{'total':>7}{'killed':>8}{'timeout':>9}{'survived':>10}{'(equivalent)':>14}{'other':>7}"
        f"{'kill rate':>11}"
    )
    table, not_killed, failures, matched = [header, "-" * len(header)], [], [], set()
    for path in only_mutate:
        statuses = module_statuses(path)
        counts = Counter(statuses.values())
        total, killed, timeout, survived = len(statuses), counts["killed"], counts["timeout"], counts["survived"]
        other, rate, equivalent = total - killed - timeout - survived, 100 * (killed + timeout) / total, 0
        for name in sorted((n for n, s in statuses.items() if s not in DETECTED), key=_mutant_order):
            old, new = mutated_lines(name)
            line, because = equivalents.get(name, (None, ""))
            if statuses[name] == "survived" and line == new:
                matched.add(name)
                equivalent += 1
                not_killed.append(f"  equivalent {name}: {new}\n{'':<13}because {because}")
            else:
                not_killed.append(f"  {statuses[name]:<10} {name}: {old}  ->  {new}")
        table.append(
            f"{path:<28}{total:>7}{killed:>8}{timeout:>9}{survived:>10}{equivalent:>14}{other:>7}{rate:>10.1f}%"
        )
        if rate < fail_under:
            failures.append(f"{path} kills {rate:.1f}% of its mutants, under {fail_under:g}%")
    print("\n".join(table))
    if not_killed:
        print("\nNot killed (`mutmut show NAME` shows the diff):")
        print("\n".join(not_killed))
    modules = tuple(f"{MODULE_DIR}.{Path(path).stem}." for path in only_mutate)
    stale = sorted(name for name in set(equivalents) - matched if name.startswith(modules))
    if stale:
        print(f"\nStale entries in {EQUIVALENTS.name}, no longer a survivor with that line: {', '.join(stale)}")
    for failure in failures:
        print(f"\nFAIL: {failure}: kill its survivors with tests, or judge them equivalent in {EQUIVALENTS.name}.")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check-config", action="store_true", help="only check [tool.mutmut]; report nothing")
    parser.add_argument("--fail-under", type=float, default=0.0, help="exit 1 if a module's kill rate (%%) is lower")
    args = parser.parse_args(argv)

    cfg = config()
    problems = check_config(cfg.only_mutate, cfg.pytest_add_cli_args_test_selection)
    if problems:
        print("pyproject.toml [tool.mutmut]:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    return 0 if args.check_config else report(cfg.only_mutate, args.fail_under)


if __name__ == "__main__":
    sys.exit(main())
