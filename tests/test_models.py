"""The dbt models in transform/, built by Meltano on PostgreSQL and on DuckDB.

A fixed set of events goes through the real listener over HTTP, real Meltano loads
it (target-postgres, target-duckdb) and builds the models with the dbt-postgres and
dbt-duckdb utilities in the same `meltano run`, and every end model must hold exact
numbers, the same on both engines. Then: a second build changes nothing; more
events, loaded and built incrementally, give what a full refresh gives.

Each engine gets its own listener and spool (the tap allows one run per spool at a
time) and its own chain of module-scoped steps, so each dbt start is paid once.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import pytest
import yaml

from tests.helpers import (
    DUCKDB_PYTHON,
    ROOT,
    Site,
    meltano,
    meltano_env,
    running_listener,
    target_postgres_env,
)

pytestmark = pytest.mark.slow

END_MODELS = {
    "vero__campaigns": ("campaign_id",),
    "vero__daily_campaign_metrics": ("date_day", "campaign_id"),
    "vero__users": ("user_id",),
    "vero__user_campaigns": ("user_id", "campaign_id"),
    "vero__events": ("event_key",),
}
RETRY_WINDOW_VAR = "vero_user_event_retry_window_minutes"


# --- the events ----------------------------------------------------------------------------------

DAY_1 = int(datetime(2026, 11, 2, 9, tzinfo=UTC).timestamp())
DAY_2 = DAY_1 + 86_400
DAY_3 = DAY_2 + 86_400

ADA, ADA_AS_TEXT, BOB, CY, DEE, EVE = (
    {"id": 1, "email": "ada@example.com"},
    {"id": "1", "email": "ada@new.example.com"},
    {"id": 2, "email": "bob@example.com"},
    {"id": 3, "email": "cy@example.com"},
    {"id": 4, "email": "dee@example.com"},
    {"id": 5, "email": "eve@example.com"},
)
WELCOME = {"id": 7, "name": "Welcome", "type": "behavioral", "trigger-event": "signed up"}
WELCOME_V2 = {**WELCOME, "name": "Welcome (v2)"}
DIGEST = {"id": 8, "name": "Digest", "type": "newsletter"}
DIGEST_AS_TEXT = {**DIGEST, "id": "8"}
GHOST = {"id": 9, "name": "Ghost"}
HARD_BOUNCE = {"bounce_type": "hard", "bounce_code": "550", "bounce_message": "550 no such user"}
SOFT_BOUNCE = {"bounce_type": "soft", "bounce_code": "421", "bounce_message": "421 try later"}


def email_event(
    event_type: str, at: int, user: dict, campaign: dict | None, message: str | None, **fields
) -> dict:
    event = {"type": event_type, f"{event_type}_at": at, "user": user, **fields}
    if campaign is not None:
        event["campaign"] = campaign
    if message is not None:
        event["message_id"] = f"{message}@veromail.com"
    return event


def tags_changed(user: dict, add: list[str], remove: list[str]) -> dict:
    return {
        "type": "user_updated",
        "user": user,
        "changes": {"_tags": {"add": add, "remove": remove}},
    }


def first_events() -> list[dict]:
    """The first load, in posting order. Five are sender retries: the same email event
    posted again (#5, #9, #12) or a user event repeated at once (#33, #38)."""
    sent_ada = email_event("sent", DAY_1, ADA, WELCOME, "m1")
    delivered_cy = email_event("delivered", DAY_1 + 130, CY, WELCOME, "m3", sender_ip="10.0.0.1")
    opened_ada = email_event("opened", DAY_1 + 600, ADA, WELCOME, "m1", user_agent="Mail/1.0")
    eve_created = {"type": "user_created", "user": {**EVE, "firstname": "Eve"}}
    eve_adds_beta = tags_changed(EVE, ["beta"], [])
    return [
        sent_ada,  # 1
        email_event("sent", DAY_1 + 60, BOB, WELCOME, "m2"),
        email_event("sent", DAY_1 + 120, CY, WELCOME, "m3"),
        email_event("sent", DAY_1 + 180, DEE, WELCOME, "m4"),
        sent_ada,  # 5: retry
        email_event("delivered", DAY_1 + 10, ADA, WELCOME, "m1"),
        delivered_cy,
        email_event("delivered", DAY_1 + 190, DEE, WELCOME, "m4"),
        delivered_cy,  # 9: retry
        email_event("bounced", DAY_1 + 70, BOB, WELCOME, "m2", **HARD_BOUNCE),  # 10
        opened_ada,  # 11
        opened_ada,  # 12: retry
        email_event("opened", DAY_1 + 3600, ADA, WELCOME, "m1"),  # a second, real open
        email_event("opened", DAY_1 + 900, CY, WELCOME, "m3"),
        email_event("clicked", DAY_1 + 3700, ADA, WELCOME, "m1"),
        email_event("converted", DAY_1 + 7200, ADA, WELCOME_V2, "m1"),  # the newest name
        email_event("unsubscribed", DAY_1 + 1000, DEE, WELCOME, None),
        email_event("complained", DAY_1 + 1100, DEE, WELCOME, "m4"),
        email_event("sent", DAY_2, ADA_AS_TEXT, DIGEST, "m5"),  # 19: user "1", a string
        email_event("sent", DAY_2 + 60, CY, DIGEST_AS_TEXT, "m6"),
        email_event("sent", DAY_2 + 120, EVE, DIGEST, "m7"),
        email_event("delivered", DAY_2 + 10, ADA_AS_TEXT, DIGEST, "m5"),
        email_event("delivered", DAY_2 + 130, EVE, DIGEST, "m7"),
        email_event("bounced", DAY_2 + 70, CY, DIGEST_AS_TEXT, "m6", **SOFT_BOUNCE),
        email_event("opened", DAY_2 + 200, EVE, DIGEST, None),  # no message_id
        email_event("opened", DAY_3 + 5, EVE, DIGEST, None),
        email_event("opened", DAY_2 + 300, ADA_AS_TEXT, DIGEST, "m5"),
        email_event("clicked", DAY_2 + 400, EVE, DIGEST, None),
        email_event("converted", DAY_3 + 100, BOB, GHOST, None),  # a campaign never sent
        email_event("unsubscribed", DAY_2 + 1000, CY, None, None),
        email_event("resubscribed", DAY_3 + 2000, CY, None, None),
        eve_created,  # 32
        eve_created,  # 33: retry
        tags_changed(EVE, ["vip"], []),
        tags_changed(EVE, [], ["vip"]),
        tags_changed(EVE, ["vip"], []),  # 36: added again, a real event
        eve_adds_beta,
        eve_adds_beta,  # 38: retry
        tags_changed({"id": "1", "email": ""}, ["alpha", "Zed"], ["inactive"]),  # 39
    ]


def more_events() -> list[dict]:
    """The second load: new events, an old email event's retry and a retry of Eve's last
    user event, which the incremental run must see as retries across runs."""
    return [
        email_event("sent", DAY_3 + 3000, EVE, WELCOME, "m8"),
        first_events()[0],  # retry of #1
        tags_changed(EVE, ["beta"], []),  # retry of #37
        email_event("delivered", DAY_3 + 3010, EVE, WELCOME, "m8"),
        tags_changed(EVE, [], ["beta"]),
        tags_changed(EVE, ["vip"], []),  # the same as #34 and #36, but not a retry
        email_event("opened", DAY_3 + 3100, EVE, WELCOME, "m8"),
    ]


# --- what the models must hold ----------------------------------------------------------------


def at(unix_seconds: int) -> str:
    return str(datetime.fromtimestamp(unix_seconds, UTC).replace(tzinfo=None))


def table(columns: str, rows: list[tuple]) -> list[dict]:
    names = columns.split()
    return [dict(zip(names, row, strict=True)) for row in rows]


COUNTS = (
    "sends deliveries opens unique_opens clicks unique_clicks bounces hard_bounces soft_bounces "
    "unsubscribes complaints conversions"
)
CAMPAIGNS = f"campaign_id campaign_name {COUNTS} delivery_rate open_rate click_rate bounce_rate"
DAILY = f"date_day campaign_id {COUNTS}"
USER_CAMPAIGNS = (
    "user_id campaign_id sends deliveries opens clicks bounces unsubscribes complaints "
    "conversions was_opened was_clicked was_bounced was_converted"
)
USERS = (
    "user_id email first_seen_at last_seen_at is_unsubscribed tags emails_sent emails_opened "
    "emails_clicked has_hard_bounced"
)

# fmt: off
FIRST_CAMPAIGNS = table(CAMPAIGNS, [
    ("7", "Welcome (v2)", 4, 3, 3, 2, 1, 1, 1, 1, 0, 1, 1, 1, "0.7500", "0.6667", "0.3333", "0.2500"),  # noqa: E501
    ("8", "Digest",       3, 2, 3, 2, 1, 1, 1, 0, 1, 0, 0, 0, "0.6667", "1.0000", "0.5000", "0.3333"),  # noqa: E501
    ("9", "Ghost",        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, None, None, None, None),
])
FIRST_DAILY = table(DAILY, [
    (at(DAY_1)[:10], "7", 4, 3, 3, 2, 1, 1, 1, 1, 0, 1, 1, 1),
    (at(DAY_2)[:10], "8", 3, 2, 2, 2, 1, 1, 1, 0, 1, 0, 0, 0),
    (at(DAY_3)[:10], "8", 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
    (at(DAY_3)[:10], "9", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1),
])
FIRST_USER_CAMPAIGNS = table(USER_CAMPAIGNS, [
    ("1", "7", 1, 1, 2, 1, 0, 0, 0, 1, True, True, False, True),
    ("1", "8", 1, 1, 1, 0, 0, 0, 0, 0, True, False, False, False),
    ("2", "7", 1, 0, 0, 0, 1, 0, 0, 0, False, False, True, False),
    ("2", "9", 0, 0, 0, 0, 0, 0, 0, 1, False, False, False, True),
    ("3", "7", 1, 1, 1, 0, 0, 0, 0, 0, True, False, False, False),
    ("3", "8", 1, 0, 0, 0, 1, 0, 0, 0, False, False, True, False),
    ("4", "7", 1, 1, 0, 0, 0, 1, 1, 0, False, False, False, False),
    ("5", "8", 1, 1, 2, 1, 0, 0, 0, 0, True, True, False, False),
])


def first_users(received: dict[int, str]) -> list[dict]:
    """`received[n]`: when event #n (1-based posting order) arrived, as the engine says."""
    return table(USERS, [
        ("1", "ada@new.example.com", at(DAY_1), received[39], False, "Zed,alpha", 2, 2, 1, False),
        ("2", "bob@example.com", at(DAY_1 + 60), at(DAY_3 + 100), False, "", 1, 0, 0, True),
        ("3", "cy@example.com", at(DAY_1 + 120), at(DAY_3 + 2000), False, "", 2, 1, 0, False),
        ("4", "dee@example.com", at(DAY_1 + 180), at(DAY_1 + 1100), True, "", 1, 0, 0, False),
        ("5", "eve@example.com", at(DAY_2 + 120), received[37], False, "beta,vip", 1, 1, 1, False),
    ])
# fmt: on


# --- the pipelines -------------------------------------------------------------------------------


@dataclass
class Pipeline:
    """One engine's listener, Meltano environment and warehouse."""

    engine: str
    site: Site
    env: dict[str, str]
    location: str  # the PostgreSQL schema, or the DuckDB file
    dsn: str = ""

    def run(self, *tasks: str) -> None:
        meltano(self.env, "run", *tasks)

    def dbt(self, *args: str) -> None:
        meltano(self.env, "invoke", f"dbt-{self.engine}", *args)

    def query(self, sql: str) -> list[dict]:
        """Rows as JSON would carry them (decimals, dates and times as text), so the
        two engines' answers compare directly."""
        if self.engine == "postgres":
            with psycopg.connect(self.dsn) as conn:
                cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
                rows = cursor.execute(sql.format(schema=self.location)).fetchall()
            return json.loads(json.dumps(rows, default=str))
        read = subprocess.run(
            [
                str(DUCKDB_PYTHON),
                "-c",
                DUCKDB_QUERY,
                self.location,
                sql.format(schema="stitch_vero"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert read.returncode == 0, read.stderr
        return json.loads(read.stdout)

    def table(self, model: str) -> list[dict]:
        order = ", ".join(END_MODELS[model])
        return self.query(f"SELECT * FROM {{schema}}.{model} ORDER BY {order}")

    def end_models(self) -> dict[str, list[dict]]:
        return {model: self.table(model) for model in END_MODELS}

    def received(self, ids: list[str]) -> dict[int, str]:
        """When each of these arrivals was accepted, by its 1-based position in `ids`."""
        rows = self.query(
            "SELECT __sdc_primary_key AS id, CAST(_sdc_webhook_received_at AS TIMESTAMP) AS at "
            "FROM {schema}.data"
        )
        at_by_id = {row["id"]: row["at"] for row in rows}
        return {n: at_by_id[event_id] for n, event_id in enumerate(ids, start=1)}


DUCKDB_QUERY = """
import json, sys
import duckdb
db = duckdb.connect(sys.argv[1], read_only=True)
cursor = db.execute(sys.argv[2])
names = [d[0] for d in cursor.description]
print(json.dumps([dict(zip(names, row)) for row in cursor.fetchall()], default=str))
"""


@pytest.fixture(scope="module", params=["postgres", "duckdb"])
def pipeline(request, tmp_path_factory):
    engine = request.param
    work = tmp_path_factory.mktemp(f"models-{engine}")
    with running_listener(work / "data", new_token=True) as listener:
        env = meltano_env(work, listener.data_dir)
        if engine == "duckdb":
            path = work / "duckdb" / "vero.duckdb"
            path.parent.mkdir()
            yield Pipeline(
                engine, Site(listener), {**env, "TARGET_DUCKDB_PATH": str(path)}, str(path)
            )
        else:
            yield from postgres_pipeline(request.getfixturevalue("pg_dsn"), listener, env)


def postgres_pipeline(pg_dsn: str, listener, env: dict[str, str]):
    """The PostgreSQL pipeline in a fresh schema, dropped afterwards with the models in it."""
    schema = f"models_{uuid.uuid4().hex[:12]}"
    env = {**env, **target_postgres_env(pg_dsn, schema)}
    try:
        yield Pipeline("postgres", Site(listener), env, schema, pg_dsn)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def load_and_build(pipeline: Pipeline) -> None:
    """One `meltano run`: the load, then `dbt build` (models and their tests)."""
    if pipeline.engine == "postgres":
        pipeline.run("vero-to-postgres-models")
    else:
        pipeline.run("tap-vero-webhook", "target-duckdb", "dbt-duckdb:build")


@pytest.fixture(scope="module")
def first_build(pipeline: Pipeline) -> dict[str, list[dict]]:
    pipeline.site.post(first_events())
    load_and_build(pipeline)
    return pipeline.end_models()


@pytest.fixture(scope="module")
def second_build(first_build, pipeline: Pipeline) -> dict[str, list[dict]]:
    """A build with nothing new loaded."""
    pipeline.run(f"dbt-{pipeline.engine}:build")
    return pipeline.end_models()


@pytest.fixture(scope="module")
def incremental_build(second_build, pipeline: Pipeline) -> dict[str, list[dict]]:
    pipeline.site.post(more_events())
    load_and_build(pipeline)
    return pipeline.end_models()


@pytest.fixture(scope="module")
def full_refresh(incremental_build, pipeline: Pipeline) -> dict[str, list[dict]]:
    pipeline.dbt("build", "--full-refresh")
    return pipeline.end_models()


# --- the tests -----------------------------------------------------------------------------------


def test_campaigns(first_build):
    assert first_build["vero__campaigns"] == FIRST_CAMPAIGNS


def test_daily_campaign_metrics(first_build):
    assert first_build["vero__daily_campaign_metrics"] == FIRST_DAILY


def test_users(first_build, pipeline: Pipeline):
    received = pipeline.received(pipeline.site.accepted_ids())
    assert first_build["vero__users"] == first_users(received)


def test_user_campaigns(first_build):
    assert first_build["vero__user_campaigns"] == FIRST_USER_CAMPAIGNS


def test_events_are_the_distinct_events_with_typed_columns(first_build, pipeline: Pipeline):
    events = first_build["vero__events"]
    retries = {5, 9, 12, 33, 38}
    ids = pipeline.site.accepted_ids()
    kept = [event_id for n, event_id in enumerate(ids, start=1) if n not in retries]
    assert sorted(row["arrival_id"] for row in events) == sorted(kept)
    by_arrival = {row["arrival_id"]: row for row in events}
    bounce = by_arrival[ids[9]]
    expected = {
        "event_type": "bounced",
        "user_id": "2",
        "user_email": "bob@example.com",
        "campaign_id": "7",
        "campaign_name": "Welcome",
        "campaign_type": "behavioral",
        "campaign_trigger_event": "signed up",
        "message_id": "m2@veromail.com",
        **HARD_BOUNCE,
        "occurred_at": at(DAY_1 + 70),
    }
    assert {name: bounce[name] for name in expected} == expected
    eve_created = by_arrival[ids[31]]
    assert eve_created["occurred_at"] == eve_created["received_at"], "no time of its own"


def test_a_second_build_changes_nothing(first_build, second_build):
    assert second_build == first_build


def test_incremental_build_adds_the_new_events_only(incremental_build, pipeline: Pipeline):
    assert len(incremental_build["vero__events"]) == 34 + 5
    assert incremental_build["vero__campaigns"][0] == table(CAMPAIGNS, [
        # #40, the campaign's newest event, says "Welcome"
        ("7", "Welcome", 5, 4, 4, 3, 1, 1, 1, 1, 0, 1, 1, 1, "0.8000", "0.7500", "0.2500", "0.2000"),  # noqa: E501
    ])[0]  # fmt: skip
    received = pipeline.received(pipeline.site.accepted_ids())
    assert incremental_build["vero__users"][4] == table(USERS, [
        ("5", "eve@example.com", at(DAY_2 + 120), received[45], False, "vip", 2, 2, 1, False),
    ])[0]  # fmt: skip


def test_incremental_build_equals_a_full_refresh(incremental_build, full_refresh):
    assert incremental_build == full_refresh


def test_retry_window_is_a_var(full_refresh, pipeline: Pipeline):
    """With a window of 0 minutes no user event is a retry; email retries still are."""
    pipeline.dbt(
        "run", "--select", "vero__events", "--full-refresh", "--vars", f"{RETRY_WINDOW_VAR}: 0"
    )
    assert len(pipeline.table("vero__events")) == 34 + 5 + 3


# --- settings ------------------------------------------------------------------------------------


def test_dbt_profiles_default_to_the_loaders_settings():
    """dbt builds next to `data` with no setting: its defaults are the loaders' own."""
    project = yaml.safe_load((ROOT / "meltano.yml").read_text())
    loaders = {plugin["name"]: plugin["config"] for plugin in project["plugins"]["loaders"]}
    profiles = (ROOT / "transform" / "profiles.yml").read_text()

    def default_of(variable: str) -> str:
        match = re.search(rf"env_var\('{variable}', '([^']*)'\)", profiles)
        assert match, f"profiles.yml reads no {variable} with a default"
        return match.group(1)

    for engine in ("postgres", "duckdb"):
        schema = default_of(f"TARGET_{engine.upper()}_DEFAULT_TARGET_SCHEMA")
        assert schema == loaders[f"target-{engine}"]["default_target_schema"]
    path = loaders["target-duckdb"]["path"].removeprefix("$MELTANO_PROJECT_ROOT")
    assert f"env_var('TARGET_DUCKDB_PATH', env_var('MELTANO_PROJECT_ROOT') ~ '{path}')" in profiles
