"""Install and packaging: declared dependencies, the set-up command, LICENSE, the README's snippet."""
import pathlib
import re
import tomllib

import fastface
import fastface.data

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _setup_command(text):
    """The `python3 -m pip install ...` set-up line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("python3 -m pip install torch")]
    assert len(lines) == 1, lines
    return lines[0]


def test_dependencies_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower(): d for d in project["dependencies"]}
    assert "torch" in deps and "pillow" in deps, deps
    # the range must admit the 2.13 CPU wheel the set-up command installs
    from packaging.specifiers import SpecifierSet
    spec = SpecifierSet(deps["torch"][len("torch"):])
    assert "2.13.0" in spec and "2.1.0" in spec, deps["torch"]


def test_license_file_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    license_ = project["license"]
    name = license_["text"] if isinstance(license_, dict) else license_
    text = (ROOT / "LICENSE").read_text()
    assert name == "MIT" and text.startswith("MIT License") and "WITHOUT WARRANTY" in text


def test_setup_command_same_in_readme_and_ci():
    readme = _setup_command((ROOT / "README.md").read_text())
    ci = _setup_command((ROOT / ".ci" / "run").read_text())
    assert readme == ci
    words = readme.split()
    for pkg in ("cmake", "scikit-learn", "pillow"):
        assert pkg in words, pkg


def test_no_hand_written_png_writer():
    assert not hasattr(fastface.data, "write_png")
    for path in (ROOT / "fastface").rglob("*.py"):
        assert "IHDR" not in path.read_text(), path


def test_readme_ten_lines_run(capsys):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Ten lines"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12, code
    env = {"__name__": "readme_ten_lines"}
    exec(compile(code, "README.md#ten-lines", "exec"), env)
    out = capsys.readouterr().out
    assert out.strip(), "the snippet prints its result"
    # the snippet walks the real path: an encoder, Faces, emd_rerank and identity names
    for word in ("encoder", "Faces", "emd_rerank"):
        assert word in code, word
