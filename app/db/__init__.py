"""Persistence: the ORM models, the engine and sessions, and the migrations runner."""
