"""Each stage's `deps` list every project module its command imports, so editing one reruns what it feeds."""

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def project_imports(module: Path) -> set[str]:
    """Repo-relative paths of the pipeline modules `module` imports, directly or through other pipeline modules."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if alias.name.split(".")[0] == "pipeline"]
            for name in names:
                path = REPO / (name.replace(".", "/") + ".py")
                if path.is_file() and path.name != "__init__.py" and str(path.relative_to(REPO)) not in seen:
                    seen.add(str(path.relative_to(REPO)))
                    todo.append(path)
    return seen


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_depends_on_every_project_module_it_imports(name):
    stage = STAGES[name].get("do", STAGES[name])
    script = REPO / "stages" / f"{name}.py"
    deps = set(stage["deps"])
    assert f"stages/{name}.py" in deps
    missing = sorted(project_imports(script) - deps)
    assert missing == [], f"add to dvc.yaml {name}.deps: {missing}"
