"""Every result file name is written once, in xbench/pipeline/results.py (a scan of the package's string literals)."""

import ast
from pathlib import Path

import xbench
from xbench.pipeline import results

PACKAGE = Path(xbench.__file__).parent
#: The model store's entry layout (pipeline/store/) is the cache's own, not a job's results: a renamed result file must not orphan cached models.
OWN_NAMES = ("pipeline/store/",)


def _names() -> set[str]:
    return {v for k, v in vars(results).items() if k.isupper() and isinstance(v, str) and (k.endswith(("_FILE", "_PLOT", "_CSV", "_MD", "_TEX", "_DIR", "_LOG")))}


def _literals(path: Path):
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
            yield n.lineno, n.value


def test_the_names_cover_what_a_job_and_a_report_write():
    names = _names()
    assert {"metrics.json", "curves.npz", "heatmaps.npz", "split.csv", "test_predictions.npz", "history.csv", "run.log", "plots",
            "summary.csv", "summary.md", "pairwise.csv", "reliability.csv", "confusion_matrix.png"} <= names


def test_no_module_retypes_a_result_file_name():
    names = {n for n in _names() if "." in n}  # file names and .hydra ("plots" is also a word: dict keys, MLflow's artifact folder)
    found = [f"{p.relative_to(PACKAGE)}:{line}: {value!r}" for p in sorted(PACKAGE.rglob("*.py"))
             if p != PACKAGE / "pipeline" / "results.py" and not any(str(p.relative_to(PACKAGE)).startswith(o) for o in OWN_NAMES)
             for line, value in _literals(p) if value in names]
    assert not found, "use the name from xbench.pipeline.results:\n" + "\n".join(found)
