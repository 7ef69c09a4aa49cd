"""Fixtures: a data directory, the real listener on a real port, an in-process app and
its test client, and the local PostgreSQL. Helpers live in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tap_vero_webhook.listener.app import create_app
from tap_vero_webhook.listener.settings import ListenerSettings
from tests.helpers import IN_CI, PG_DSN, create_token, running_listener


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def listener(data_dir: Path):
    """A running `vero-webhook serve` with one webhook token (`listener.tokens[0]`)."""
    with running_listener(data_dir, new_token=True) as running:
        yield running


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The listener's Flask app in this process (for tests of answers, not of sockets), one
    per test module, on a data directory holding one token: `app.config["TEST_TOKEN"]`."""
    data_dir = tmp_path_factory.mktemp("app") / "data"
    token = create_token(data_dir)
    application = create_app(ListenerSettings(data_dir, max_body_bytes=100_000))
    application.config["TEST_TOKEN"] = token
    yield application
    application.state.close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The local PostgreSQL; under CI a missing server is a failure, elsewhere a skip."""
    import psycopg

    try:
        with psycopg.connect(PG_DSN, connect_timeout=5) as conn:
            conn.execute("select 1")
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL at {PG_DSN!r} is unreachable: {exc}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return PG_DSN
