"""Create Neocloud's three PostgreSQL roles (idempotent). Run as a superuser:

    python scripts/pg_roles.py postgresql://postgres@127.0.0.1:5432/postgres

- neocloud_owner: owns the schema and runs migrations; BYPASSRLS (fixtures and tamper
  tests use it too), CREATEDB (the test suite creates its database as it).
- neocloud_app: serves requests and tasks; NOBYPASSRLS, so row-level security binds it.
- neocloud_platform: platform jobs (the audit sequencer); BYPASSRLS, narrow grants.

Passwords are not set here: the local server trusts 127.0.0.1. In production set them
with ALTER ROLE and put them in the *_DATABASE_URL settings.
"""

import sys

import psycopg

ROLES = {
    "neocloud_owner": "LOGIN CREATEDB BYPASSRLS",
    "neocloud_app": "LOGIN NOBYPASSRLS",
    "neocloud_platform": "LOGIN BYPASSRLS",
}


def main(url: str) -> int:
    try:
        connection = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        print(f"Cannot reach PostgreSQL at {url}: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    with connection:
        for role, attributes in ROLES.items():
            exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
            verb = "ALTER" if exists else "CREATE"
            connection.execute(f"{verb} ROLE {role} WITH {attributes}")
    print("PostgreSQL roles ready: " + ", ".join(ROLES))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/postgres"))
