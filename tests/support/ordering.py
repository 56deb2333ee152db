"""The order tests run in, decided by what they start rather than by file names."""


def pytest_collection_modifyitems(config, items):
    """Tests that start the session's Celery worker run after all that do not: once up, the
    worker keeps sequencing, checkpointing and admitting for the rest of the session, and
    tests that drive those steps themselves must not meet it. Before those, the browser
    tests run after the rest, since the session's Chromium keeps an event loop on the main
    thread once started (see tests.support.browser)."""

    def phase(item):
        fixtures = getattr(item, "fixturenames", ())
        return ("celery_worker" in fixtures, "open_page" in fixtures)

    items.sort(key=phase)
