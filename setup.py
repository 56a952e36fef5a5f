"""Packaging for themis-daemon; schemas/ ships inside the package as themis_daemon/schemas."""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _version():
    with open(os.path.join(HERE, "themis_daemon", "__init__.py"), encoding="utf-8") as fh:
        return re.search(r'__version__ = "([^"]+)"', fh.read()).group(1)


def _readme():
    path = os.path.join(HERE, "README.md")
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as fh:
        return fh.read()


TEST_REQUIRES = [
    "pytest>=7.4",
    "pytest-tornado>=0.8.1",
    "websockets>=12.0",
    # the packaging test builds a wheel without build isolation
    "setuptools>=64",
    "wheel>=0.40",
    # /openapi.json validity, and the docs/dashboard tests in Debian's headless Chromium
    "openapi-spec-validator>=0.7",
    "playwright>=1.40",
    # the PostgreSQL reader's tests (tests/test_pg_reader.py, against Debian's postgresql server)
    "psycopg[binary]>=3.1",
    # `themis-daemon status --watch` under a pseudo-terminal
    "pexpect>=4.8",
    # property-based tests of the live API against its own /openapi.json (tests/test_schemathesis.py)
    "schemathesis>=4.0",
]

setup(
    name="themis-daemon",
    version=_version(),
    description="A Tornado daemon that serves and watches Themis LLM-evaluation storage",
    long_description=_readme(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["themis_daemon", "themis_daemon.*"])
    + ["themis_daemon.schemas", "themis_daemon.demo.stores"],
    # The top-level schemas/ and the demo store are installed inside the package, so a wheel
    # or a non-editable `pip install .` finds them next to the code.
    package_dir={
        "themis_daemon": "themis_daemon",
        "themis_daemon.schemas": "schemas",
        "themis_daemon.demo.stores": "tests/data",
    },
    package_data={
        "themis_daemon.schemas": ["*.json", "responses/*.json"],
        "themis_daemon.demo.stores": ["themis-v1/**/*", "themis-v1-gzip/**/*", "themis-v4/sqlite/themis.sqlite3"],
        "themis_daemon": ["static/**/*"],
    },
    install_requires=[
        "tornado>=6.3",
        "numpy>=1.24",
        "scipy>=1.11",
        "jsonschema>=4.18",
        "pyyaml>=6.0",
        "prometheus_client>=0.17",
        "orjson>=3.9",
        "rich>=13.0",
        # the Themis 1.x reader: typed decoding of only the fields it keeps, faster gzip
        "msgspec>=0.18",
        "zlib-ng>=0.4",
    ],
    extras_require={"test": TEST_REQUIRES, "postgres": ["psycopg[binary]>=3.1"]},
    entry_points={
        "console_scripts": [
            "themis-daemon=themis_daemon.cli:main",
            "themis=themis_daemon.cli:main",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Tornado",
    ],
)
