"""The API's request and response schemas (pydantic), apart from the ORM models they are built from."""
