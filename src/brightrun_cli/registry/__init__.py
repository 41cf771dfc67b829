"""The SQLite registry: engine, tables, migrations, queries. The only place with SQL."""
