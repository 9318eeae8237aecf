"""The service's logic, one module per idea. Functions take a session and never commit: the request's
dependency or the worker's task wrapper owns the transaction (``app.db.session.transaction``)."""
