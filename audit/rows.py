"""Writing many plain rows at once: the sequencer's leaves and tree nodes.

Django's bulk_create builds a model instance per row and binds every value on the client
(most of a sequencer call's time); the log's own tables need none of that. PostgreSQL takes
the rows by COPY, the fastest way in, and other databases by one executemany.
"""

from django.db import connections


def insert_rows(model, columns: tuple[str, ...], rows: list[tuple], *, using: str) -> None:
    """Insert ``rows`` (tuples of Python values, in ``columns`` order) into ``model``'s table."""
    if not rows:
        return
    connection = connections[using]
    table = connection.ops.quote_name(model._meta.db_table)
    names = ", ".join(connection.ops.quote_name(column) for column in columns)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # psycopg adapts the values itself; Django's wrapper still turns its errors into
            # django.db's, as for any other statement.
            with connection.wrap_database_errors, cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            fields = [model._meta.get_field(column) for column in columns]  # Django's forms (dates, say)
            cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({', '.join(['%s'] * len(columns))})",
                               [[field.get_db_prep_save(value, connection) for field, value in zip(fields, row)]
                                for row in rows])
