"""docker habits of the CLI: --format templates, --filter, --since/--until times."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cli.template import TemplateError, compile_template, tabulate
from fleetd.errors import InvalidRequest
from fleetd.filters import parse_filters
from fleetd.models import iso, utcnow
from fleetd.store import Store
from fleetd.times import parse_time

RECORD = {"id": "3f9c2a", "state": "running", "exit_code": None, "ready": True,
          "limits": {"ttl": 3600, "cpus": 0.25}, "labels": {"team": "a"}}


def test_template_fields_paths_and_json() -> None:
    render = compile_template("{{.state}} {{ .limits.ttl }} {{json .labels}} {{.ready}} [{{.exit_code}}]")
    assert render(RECORD) == 'running 3600 {"team":"a"} true []'
    assert json.loads(compile_template("{{json .}}")(RECORD)) == RECORD
    assert compile_template(r"{{.id}}\t{{.limits}}")(RECORD) == '3f9c2a\t{"ttl":3600,"cpus":0.25}'
    assert compile_template("{{.State}} {{.Limits.TTL}}")(RECORD) == "running 3600"  # docker's spelling
    assert compile_template("{{.ID}}/{{.id}}")({"ID": "A", "id": "b"}) == "A/b"  # the exact name first


@pytest.mark.parametrize("template", ["{{if .state}}x{{end}}", "{{.state | printf}}", "{{.state", "x}}",
                                      "{{range .labels}}", "{{json}}", "{{state}}"])
def test_template_outside_the_subset_is_an_error(template: str) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template(template)
    assert "\n" not in str(caught.value)


def test_template_unknown_field_is_an_error_not_empty() -> None:
    with pytest.raises(TemplateError, match=r"no field \.limits\.nope"):
        compile_template("{{.limits.nope}}")(RECORD)
    with pytest.raises(TemplateError, match=r"no field \.state\.x"):
        compile_template("{{.state.x}}")(RECORD)


def test_table_header_and_alignment() -> None:
    render = compile_template(r"{{.ID}}\t{{.limits.ttl}}\t{{json .labels}}")
    lines = tabulate([render(None), render({"ID": "abc", "limits": {"ttl": 5}, "labels": {}})])
    assert lines == ["ID    TTL   LABELS", "abc   5     {}"]


def test_parse_time_three_forms() -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    assert parse_time("10m", now=now) == datetime(2026, 12, 4, 11, 50, tzinfo=UTC)
    assert parse_time("1h30m", now=now) == datetime(2026, 12, 4, 10, 30, tzinfo=UTC)
    assert parse_time("1.5h", now=now) == datetime(2026, 12, 4, 10, 30, tzinfo=UTC)
    assert parse_time("2026-12-04T10:00:00Z") == datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
    assert parse_time("2026-12-04T11:00:00+01:00") == datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
    assert parse_time("2026-12-04T10:00:00") == datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
    assert parse_time("1796378400") == datetime.fromtimestamp(1796378400, UTC)
    assert parse_time("1796378400.5").microsecond == 500000


@pytest.mark.parametrize("text", ["", "10", "ten minutes", "10x", "-5m", "2026-13-40T00:00:00Z", "1e99"])
def test_parse_time_rejects_others_in_one_line(text: str) -> None:
    if text == "10":
        assert parse_time(text).year == 1970  # Unix seconds, as docker reads a bare number
        return
    with pytest.raises(InvalidRequest) as caught:
        parse_time(text, "since")
    assert caught.value.message.startswith("since: ") and "\n" not in caught.value.message


def test_parse_filters() -> None:
    assert parse_filters(["state=running", "label=team=a", "label=x", "status=exited"]) == {
        "state": ["running", "exited"], "label": ["team=a", "x"]}
    for bad in ["state", "colour=red", "state=asleep", "name=", "label==a"]:
        with pytest.raises(InvalidRequest, match="bad filter"):
            parse_filters([bad])


def add(store: Store, agent_id: str, name: str, state: str, role: str = "default",
        labels: dict[str, str] | None = None) -> None:
    store.insert_agent(agent_id, name=name, image="img", role=role, state=state, created_at=iso(utcnow()),
                       spec=json.dumps({"image": "img", "labels": labels or {}}))


def test_store_filters_or_within_a_key_and_across_keys(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    add(store, "aaa111", "crawler-1", "running", labels={"team": "a", "tier": "x"})
    add(store, "aaa222", "crawler-2", "exited", labels={"team": "b"})
    add(store, "bbb333", "writer", "running", role="researcher", labels={"team.name": 'q"uote'})

    def ids(filters: list[str], all_: bool = False) -> list[str]:
        return [a["id"] for a in store.filtered_agents(parse_filters(filters), all_)]

    assert ids(["label=team=a"]) == ["aaa111"]
    assert ids(["label=team=b"]) == []  # exited: not live
    assert ids(["label=team=b"], all_=True) == ["aaa222"]
    assert ids(["label=team=a", "label=team=b"], all_=True) == ["aaa111", "aaa222"]
    assert ids(["label=tier"]) == ["aaa111"]
    assert ids(["label=team.name=q\"uote"]) == ["bbb333"]
    assert ids(["state=exited"]) == ["aaa222"]  # a state filter needs no -a
    assert ids(["state=exited", "state=running"]) == ["aaa111", "aaa222", "bbb333"]
    assert ids(["name=crawler"], all_=True) == ["aaa111", "aaa222"]
    assert ids(["name=crawler", "state=running"]) == ["aaa111"]
    assert ids(["id=bbb"]) == ["bbb333"]
    assert ids(["id=%"]) == []  # no LIKE wildcards
    assert ids(["role=researcher", "label=team=a"]) == []
    store.close()
