"""The store's schema history as Alembic revisions, for SQLite and PostgreSQL alike.

Each revision also writes its ordinal into ``schema_info.version``, the number mixbench
used before Alembic, so an older mixbench opening a newer database still refuses it with its
own clear message. Databases made before Alembic carry only ``schema_info``; ``LEGACY`` maps
their version to the revision they match, which is stamped before upgrading.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

HERE = Path(__file__).resolve().parent
LEGACY = {1: "0001_v1", 2: "0002_checkpoint_path"}  # schema_info.version -> revision


def config(connection: Connection) -> Config:
    """An Alembic config that runs on ``connection``, inside the caller's transaction."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


@cache
def script() -> ScriptDirectory:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    return ScriptDirectory.from_config(cfg)


def head() -> str:
    return script().get_current_head()


def known(revision: str) -> bool:
    return revision in {r.revision for r in script().walk_revisions()}
