"""The CRM store: SQLAlchemy 2 models, sessions, Alembic migrations, import and data quality."""
