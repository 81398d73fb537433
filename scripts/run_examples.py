"""
Run the examples in full mode and store their outputs for the documentation (``docs/examples.rst``).

Every ``examples/*.py`` (not the ``_`` helpers) runs in its own process, one after the other, with
``--out docs/_generated/examples``: each writes ``<name>.txt`` (its table and the settings it was made with) and its
plots (``<name>_*.png``, or a ``<name>/`` directory), which the docs include. The previous outputs of an example are
removed before it runs, so no stale plot survives.

Run: ``python scripts/run_examples.py [NAME ...] [--out DIR] [--smoke]`` (about 7 minutes on 2 CPU cores for all
of them); commit the files it writes together with the examples that made them.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DEFAULT_OUT = ROOT / "docs" / "_generated" / "examples"


def examples() -> list[Path]:
    """The example scripts, by name."""
    return sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


def clean(out: Path, name: str) -> None:
    """Remove an example's previous outputs from `out`."""
    for path in [out / f"{name}.txt", *out.glob(f"{name}_*.png")]:
        path.unlink(missing_ok=True)
    if (out / name).is_dir():
        shutil.rmtree(out / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="examples to run (default: all), e.g. afd deep_defense")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--smoke", action="store_true", help="pass --smoke to the examples (a quick check)")
    args = parser.parse_args(argv)
    scripts = examples()
    if args.names:
        known = {p.stem: p for p in scripts}
        unknown = [n for n in args.names if n not in known]
        if unknown:
            parser.error(f"unknown example(s) {unknown}; known: {sorted(known)}")
        scripts = [known[n] for n in args.names]
    args.out.mkdir(parents=True, exist_ok=True)
    failed, times = [], {}
    for script in scripts:
        clean(args.out, script.stem)
        command = [sys.executable, str(script), "--out", str(args.out)] + (["--smoke"] if args.smoke else [])
        print(f"=== {script.stem}: {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        status = subprocess.call(command, cwd=ROOT)
        times[script.stem] = time.perf_counter() - started
        print(f"=== {script.stem}: exit status {status}, {times[script.stem]:.0f} s", flush=True)
        if status != 0:
            failed.append(script.stem)
    print("\n".join(["", "example | wall time (s)", "--- | ---"]
                    + [f"{name} | {seconds:.0f}" for name, seconds in times.items()]))
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
