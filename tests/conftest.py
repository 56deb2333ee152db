"""The suite's plugins: each concern lives in a module of tests/support/."""

pytest_plugins = [
    "tests.support.database",
    "tests.support.ordering",
    "tests.support.people",
    "tests.support.clients",
    "tests.support.browser",
    "tests.support.processes",
]
