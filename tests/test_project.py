"""Finding the project a command works on."""

from __future__ import annotations

import pytest

from tunewise.errors import TunewiseError
from tunewise.project import find_project
from tunewise.scaffold import scaffold


def test_find_project_from_a_folder_a_subfolder_or_a_spec_file(tmp_path):
    project = scaffold(tmp_path / "p")
    assert find_project(project.root).root == project.root
    assert find_project(project.root / "data").root == project.root  # walks up to tunewise.yaml
    other = project.root / "other.yaml"
    other.write_text(project.spec_path.read_text())
    assert find_project(other).root == project.root


def test_a_mistyped_path_is_an_error_not_a_project_further_up(tmp_path):
    project = scaffold(tmp_path / "p")
    with pytest.raises(TunewiseError, match="no such file or folder: .*tunewsie.yaml"):
        find_project(project.root / "tunewsie.yaml")


def test_run_reads_the_spec_file_it_is_given(tmp_path, run_cli):
    project = scaffold(tmp_path / "p")
    broken = project.root / "broken.yaml"
    broken.write_text("task: {name: x, target: y}\ndata: {train: data/train.jsonl}\nmethd: lora\n")
    code, _, err = run_cli("run", str(broken))
    assert code == 1
    assert "broken.yaml" in err and "unknown key 'methd' (did you mean 'method'?)" in err
