"""The review API and CLI on bad input: unknown review, double submission, a taken name, a missing API key off
loopback; and results and export from the registry."""

from __future__ import annotations

import csv
import io
import json

import pytest
from fastapi.testclient import TestClient

from tests.review_fixtures import SECRET_ARMS, eval_project
from tunewise.errors import TunewiseError
from tunewise.review.app import create_app
from tunewise.review.store import ReviewError, ReviewStore


@pytest.fixture
def reviewed(tmp_path):
    project, run_id = eval_project(tmp_path, n=4)
    review = ReviewStore(project).create(list(SECRET_ARMS), run_id)
    return project, run_id, review


def test_double_submission_and_a_taken_name_are_refused_without_counting_twice(reviewed):
    project, _, review = reviewed
    client = TestClient(create_app(project, review["id"], no_auth=True))
    token = client.post("/api/join", json={"name": "Ada"}).json()["token"]
    headers = {"X-Reviewer": token}
    state = client.get("/api/state", headers=headers).json()
    assert state["done"] == 0 and state["item"]["position"] == 0
    assert set(state["item"]) == {"position", "input", "reference", "left", "right"}
    assert (
        client.post("/api/choice", json={"position": 0, "choice": "left"}, headers=headers).status_code == 200
    )
    again = client.post("/api/choice", json={"position": 0, "choice": "right"}, headers=headers)
    assert again.status_code == 409 and "already has your choice" in again.json()["error"]
    assert len(ReviewStore(project).choices(review["id"])) == 1
    taken = client.post("/api/join", json={"name": " ada "})
    assert taken.status_code == 409 and "already takes part" in taken.json()["error"]
    bad = client.post("/api/choice", json={"position": 1, "choice": "maybe"}, headers=headers)
    assert bad.status_code == 400 and "unknown choice" in bad.json()["error"]
    assert (
        client.post("/api/choice", json={"position": 9, "choice": "tie"}, headers=headers).status_code == 404
    )
    assert client.get("/api/state", headers={"X-Reviewer": "forged"}).status_code == 401
    assert client.post("/api/undo", headers=headers).json()["done"] == 0
    assert client.post("/api/undo", headers=headers).status_code == 409  # nothing left to undo


def test_off_loopback_the_api_needs_a_key(reviewed):
    from tunewise.serve.auth import create_key

    project, _, review = reviewed
    _, key = create_key(project, "reviewers")
    client = TestClient(create_app(project, review["id"], no_auth=False))
    assert client.get("/").status_code == 200  # the page holds no data
    assert client.post("/api/join", json={"name": "Ada"}).status_code == 401
    auth = {"Authorization": f"Bearer {key}"}
    assert client.post("/api/join", json={"name": "Ada"}, headers=auth).status_code == 200


def test_unknown_review_and_bad_arms_are_clear_errors(reviewed, run_cli, tmp_path):
    project, run_id, _ = reviewed
    with pytest.raises(ReviewError, match="no review 'rv-nope'"):
        create_app(project, "rv-nope")
    with pytest.raises(TunewiseError, match="has no arm few-shot"):
        ReviewStore(project).create(["few-shot", SECRET_ARMS[1]], run_id)
    code, _, err = run_cli("review", "results", "rv-nope", "--project", str(project.root))
    assert code == 1 and "no review 'rv-nope'" in err and "Traceback" not in err
    code, _, err = run_cli("review", "create", "--arms", "x", "--project", str(project.root))
    assert code == 1 and "two different arms" in err


def test_results_and_export_map_choices_back_to_arms(reviewed, run_cli):
    project, _, review = reviewed
    store = ReviewStore(project)
    a, b = SECRET_ARMS
    # Two reviewers: Ada prefers arm a everywhere, Bo agrees on 3 of 4 items.
    for name, wants in (("Ada", ["a", "a", "a", "a"]), ("Bo", ["a", "a", "a", "b"])):
        token = store.join(review["id"], name)["token"]
        for position, want in enumerate(wants):
            left = store.state(review["id"], token)["item"]["left"]
            on_left = "a" if left.startswith("ANSWER-A") else "b"
            store.choose(review["id"], token, position, "left" if on_left == want else "right")
    code, out, _ = run_cli("review", "results", "--json", "--project", str(project.root))
    res = json.loads(out)
    # Item majorities: a, a, a, tie (Ada a, Bo b) -> 3 wins of 3 decisive items.
    assert (
        res["preference"]["wins"] == 3 and res["preference"]["ties"] == 1 and res["preference"]["losses"] == 0
    )
    # Cohen: p_o = 3/4; Ada a x4, Bo a x3 b x1 -> p_e = 12/16 = 0.75 -> kappa 0.
    assert res["agreement"]["measure"] == "cohen" and res["agreement"]["kappa"] == pytest.approx(0.0)
    assert res["position_bias"]["decisive"] == 8
    code, out, _ = run_cli("review", "export", "--format", "csv", "--project", str(project.root))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 8
    for row in rows:
        assert row["preferred"] in (a, b)
        assert (row["choice"] == "left") == (row["left_arm"] == row["preferred"])
    assert sum(r["preferred"] == b for r in rows) == 1
